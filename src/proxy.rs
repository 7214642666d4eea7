//! The request flow as pingora phases; the table of contents of the gateway.
//!
//! ```text
//! request_filter:           canonicalize → strip → route → identify → rate limit → authorize
//! upstream_peer:            the permitted route's backend (needs a Permit)
//! upstream_request_filter:  canonical path, forwarding headers
//! response_filter:          HSTS and security headers
//! fail_to_proxy:            backend failures as fixed 502/504 responses
//! logging:                  log line, metrics and audit record per request
//! ```
//!
//! Each phase is one named call into a pingora-free module; this file only moves data
//! between pingora's `Session` and those modules.

mod context;
mod respond;
mod snapshot;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

pub use context::RequestContext;
pub use snapshot::Snapshot;

use crate::audit::Audit;
use crate::canonical::canonicalize;
use crate::forwarding::{ConnectionRewrite, ForwardedFor, Strip};
use crate::identity::identify;
use crate::metrics::Metrics;
use crate::policy::{Permit, authorize};
use crate::rejection::Rejection;

/// The gateway's proxy logic; everything reloadable lives in the snapshot.
pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
}

impl Gateway {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>, audit: Arc<Audit>) -> Self {
        Self {
            snapshot,
            metrics,
            audit,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext::new(self.snapshot.load_full())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        match admit(session, ctx) {
            Ok(permit) => {
                ctx.permit = Some(permit);
                Ok(false)
            }
            Err(rejection) => {
                respond::refuse(session, ctx, rejection).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        // SECURITY: no permit, no backend. `request_filter` always sets one before
        // returning `false`; if that ever changes, fail closed here.
        let Some(permit) = &ctx.permit else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no permit for this request",
            ));
        };
        ctx.snapshot.peer(permit.backend()).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "permit names an unknown backend")
        })
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        forward(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        respond::secure(response, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        respond::failure(session, error, ctx).await
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&Error>,
        ctx: &mut RequestContext,
    ) {
        respond::log(session, error, ctx, &self.metrics, &self.audit);
    }
}

/// `request_filter`'s stages, in order; any of them may refuse.
fn admit(session: &mut Session, ctx: &mut RequestContext) -> Result<Permit, Rejection> {
    let snapshot = ctx.snapshot.clone();
    let peer = session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(std::net::SocketAddr::ip)
        .ok_or_else(|| Rejection::Internal("connection has no peer address".into()))?;

    // Read what trusted proxies said about the client before stripping it.
    let client = ForwardedFor::read(
        peer,
        &session.req_header().headers,
        snapshot.trusted_proxies(),
    );
    if let Some(id) = client.upstream_request_id() {
        ctx.request_id = id.to_owned();
    }
    ctx.client = Some(client);

    let target =
        canonicalize(session.req_header().raw_path()).map_err(Rejection::AmbiguousTarget)?;
    let plan = Strip::plan(&session.req_header().headers);
    strip(session.req_header_mut(), &plan);
    ctx.host = context::request_host(session.req_header())?;

    let path = ctx.target.insert(target).path();
    let route = snapshot
        .routes()
        .find(ctx.host.as_deref(), path)
        .ok_or(Rejection::NoRoute)?;
    ctx.route = Some(route.id.clone());

    let caller = identify(route, &session.req_header().headers);
    snapshot.rate_limits().check(route, &caller)?;
    authorize(route, &caller)
}

/// Applies a [`Strip`] plan through pingora's header API, which keeps header-name case
/// for HTTP/1 in step.
fn strip(request: &mut RequestHeader, plan: &Strip) {
    for name in &plan.remove {
        request.remove_header(name);
    }
    match &plan.connection {
        ConnectionRewrite::Keep => {}
        ConnectionRewrite::Remove => {
            request.remove_header(&http::header::CONNECTION);
        }
        ConnectionRewrite::Replace(value) => {
            let _ = request.insert_header(http::header::CONNECTION, value.clone());
        }
    }
}

/// `upstream_request_filter`: the backend gets the canonical target and the gateway's
/// forwarding headers, set after pingora removed hop-by-hop headers.
fn forward(upstream_request: &mut RequestHeader, ctx: &RequestContext) -> Result<()> {
    let (Some(client), Some(target)) = (&ctx.client, &ctx.target) else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "forwarding facts missing",
        ));
    };
    let uri: http::Uri = target
        .path_and_query()
        .parse()
        .or_err(ErrorType::InternalError, "canonical target is not a URI")?;
    upstream_request.set_uri(uri);
    for (name, value) in client.headers(ctx.host.as_deref(), &ctx.request_id) {
        upstream_request.insert_header(name, value)?;
    }
    Ok(())
}
