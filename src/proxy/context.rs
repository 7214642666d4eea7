//! What the gateway knows about one request as it moves through the phases.

use std::sync::Arc;
use std::time::Instant;

use pingora::http::RequestHeader;

use super::Snapshot;
use crate::canonical::CanonicalTarget;
use crate::forwarding::ForwardedFor;
use crate::policy::Permit;
use crate::rejection::Rejection;

/// Per-request state: filled in by `request_filter`, read by the later phases.
pub struct RequestContext {
    /// The configuration this request is decided with, start to end.
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    pub request_id: String,
    /// Where the request came from, as far as the gateway can verify.
    pub client: Option<ForwardedFor>,
    /// The canonical target, once canonicalization succeeded.
    pub target: Option<CanonicalTarget>,
    /// The host as received (`Host` or `:authority`), once validated.
    pub host: Option<String>,
    pub route: Option<Arc<str>>,
    /// The verified caller, for identity headers and the audit record.
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// The user the login endpoint issued a token to.
    pub issued_to: Option<crate::directory::UserId>,
    /// What a web-login page did, when the gateway answered with one.
    pub page: Option<&'static str>,
    /// The user that page was about.
    pub page_user: Option<crate::directory::UserId>,
    /// Set only by `authorize`; `upstream_peer` refuses to run without it.
    pub permit: Option<Permit>,
    /// Why the gateway answered itself, for the log.
    pub refusal: Option<Rejection>,
    /// A JSON body being collected for `auth_token` (in front of FlexMeasures).
    pub body_guard: Option<crate::forwarding::auth_token::BodyGuard>,
    /// A small JSON body already read and checked in `request_filter`: what the
    /// backend gets instead of the body as received.
    pub checked_body: Option<bytes::Bytes>,
    /// Why the body filter stopped the request; answered by `fail_to_proxy`.
    pub body_refusal: Option<Rejection>,
}

impl RequestContext {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            started: Instant::now(),
            request_id: crate::forwarding::new_request_id(),
            client: None,
            target: None,
            host: None,
            route: None,
            identity: None,
            issued_to: None,
            page: None,
            page_user: None,
            permit: None,
            refusal: None,
            body_guard: None,
            checked_body: None,
            body_refusal: None,
        }
    }
}

/// The host a request is for: the `Host` header (HTTP/1) or `:authority` (HTTP/2),
/// as received. Several or conflicting values make the request ambiguous.
pub fn request_host(request: &RequestHeader) -> Result<Option<String>, Rejection> {
    let mut headers = request.headers.get_all(http::header::HOST).iter();
    let header = match (headers.next(), headers.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value.to_str().map_err(|_| Rejection::BadHost)?),
        (Some(_), Some(_)) => return Err(Rejection::BadHost),
    };
    let authority = request.uri.authority().map(http::uri::Authority::as_str);
    let host = match (header, authority) {
        (Some(header), Some(authority)) if !header.eq_ignore_ascii_case(authority) => {
            return Err(Rejection::BadHost);
        }
        (Some(host), _) | (None, Some(host)) => host,
        (None, None) => return Ok(None),
    };
    if crate::route::is_valid_host(host) {
        Ok(Some(host.to_owned()))
    } else {
        Err(Rejection::BadHost)
    }
}
