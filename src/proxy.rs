//! The request flow as pingora phases; the table of contents of the gateway.
//!
//! ```text
//! request_filter:           canonicalize → strip → route → identify → rate limit → authorize
//!                           → tokens outside Authorization (in front of FlexMeasures)
//!                           (or the login endpoint, answered by the gateway after its
//!                           own limits and lockouts, or passed through; or one of the
//!                           web login's pages, answered by `login`)
//! upstream_peer:            the permitted route's backend (needs a Permit)
//! upstream_request_filter:  canonical path, forwarding and identity headers
//! request_body_filter:      a guarded JSON body, inspected whole before it goes on
//! response_filter:          HSTS and security headers
//! fail_to_proxy:            backend failures as fixed 502/504 responses
//! logging:                  log line, metrics and audit record per request
//! ```
//!
//! Each phase is one named call into a pingora-free module; this file only moves data
//! between pingora's `Session` and those modules.

mod context;
mod headers;
mod respond;
mod snapshot;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

pub use context::RequestContext;
pub use snapshot::Snapshot;

use crate::audit::Audit;
use crate::canonical::canonicalize;
use crate::config::TokenInRequest;
use crate::forwarding::{ConnectionRewrite, ForwardedFor, Signed, Strip, identity_headers};
use crate::identity::{
    Authenticator, Caller, IdentityError, LoginAttempt, LoginError, VerificationPath,
};
use crate::login::{Cookies, Form, LoginGuard, LoginLimits, PageRequest, WebLogin, same_origin};
use crate::metrics::{Metrics, TokenCheck};
use crate::policy::rules::{Resolved, ResourceRef};
use crate::policy::{Permit, authorize, authorize_rule, login_pass_through};
use crate::rate_limit::{LimitClass, RateLimiter, Subject};
use crate::rejection::Rejection;
use crate::route::Access;

/// The gateway's proxy logic; everything reloadable lives in the snapshot.
pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    /// Verifies tokens and passwords; `None` without a directory.
    authenticator: Option<Arc<Authenticator>>,
    /// Rate-limit budgets; they outlive snapshots, so a reload keeps them.
    limiter: Arc<RateLimiter>,
    /// Login limits and lockouts, for both logins; `None` without a directory.
    guard: Option<Arc<LoginGuard>>,
    /// The login pages and sessions; `None` without `[web_login]`.
    web_login: Option<Arc<WebLogin>>,
}

impl Gateway {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
        authenticator: Option<Arc<Authenticator>>,
        limiter: Arc<RateLimiter>,
        guard: Option<Arc<LoginGuard>>,
        web_login: Option<Arc<WebLogin>>,
    ) -> Self {
        Self {
            snapshot,
            metrics,
            audit,
            authenticator,
            limiter,
            guard,
            web_login,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: pingora copies each request's future, which holds the context, as it
    /// sets the request up; a pointer is copied instead of the context's 512 bytes
    /// (1 500 instructions a request under callgrind).
    type CTX = Box<RequestContext>;

    fn new_ctx(&self) -> Box<RequestContext> {
        Box::new(RequestContext::new(self.snapshot.load_full()))
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestContext>,
    ) -> Result<bool> {
        // pingora keeps an HTTP/1.1 connection open between requests for as long as
        // the client likes; bound it. (A refusal may still end the connection.)
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(ctx.snapshot.client_idle_seconds()));
        }
        match self.admit(session, ctx).await {
            Ok(Admission::Forward(permit)) => {
                ctx.permit = Some(permit);
                Ok(false)
            }
            Ok(Admission::Answered) => Ok(true),
            Err(rejection) => {
                respond::refuse(session, ctx, rejection).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<RequestContext>,
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
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        forward(upstream_request, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        guard_body(body, end_of_stream, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        respond::secure(response, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut Box<RequestContext>,
    ) -> FailToProxy {
        respond::failure(session, error, ctx).await
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&Error>,
        ctx: &mut Box<RequestContext>,
    ) {
        respond::log(session, error, ctx, &self.metrics, &self.audit);
    }
}

/// What `request_filter` decided.
enum Admission {
    /// Forward to the permitted backend.
    Forward(Permit),
    /// The gateway answered itself (the login endpoint, a login page).
    Answered,
}

/// Longest login body (JSON or form) read; larger ones get 413.
const MAX_LOGIN_BODY: usize = 16 * 1024;

impl Gateway {
    /// `request_filter`'s stages, in order; any of them may refuse.
    ///
    /// The logins, the web login's pages, sessions and database lookups are awaited
    /// boxed: their futures are large, and inline they would make every request's
    /// future as large, to be allocated and copied for a token check that needs none
    /// of them.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Admission, Rejection> {
        let path = locate(session, ctx)?;
        if let Some(web_login) = &self.web_login
            && web_login.serves(&path)
        {
            ctx.route = Some(crate::login::WEB_LOGIN_ROUTE.into());
            return Box::pin(self.web_page(session, ctx, web_login, &path)).await;
        }
        if let Some(authenticator) = &self.authenticator
            && path == authenticator.login_path()
        {
            ctx.route = Some(LOGIN_ROUTE.into());
            if let Some(backend) = authenticator.login_backend() {
                return Box::pin(self.pass_login_through(backend, ctx)).await;
            }
            return Box::pin(self.login(session, ctx, authenticator)).await;
        }
        let admission = self.decide(session, ctx, &path).await?;
        if let Admission::Forward(_) = &admission {
            guard_tokens(session, ctx).await?;
        }
        Ok(admission)
    }

    /// Route, identify, rate limit and authorize a request for a backend.
    async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        path: &str,
    ) -> Result<Admission, Rejection> {
        let snapshot = ctx.snapshot.clone();
        if let Some(rules) = snapshot.rules() {
            let method = session.req_header().method.as_str().to_owned();
            let matched = rules
                .find(ctx.host.as_deref(), &method, path)
                .ok_or(Rejection::NoRoute)?;
            ctx.route = Some(matched.rule.id.clone());
            let caller = self
                .identify(matched.rule.access, matched.rule.mfa, session, ctx)
                .await?;
            self.limit(&matched.rule.rate_limits, &caller, &matched.rule.id, ctx)
                .await?;
            let resolved = match (&matched.rule.resource, &caller) {
                (Some(reference), Caller::User(_)) => {
                    self.resolve(reference, &matched.captures).await?
                }
                _ => None,
            };
            return authorize_rule(&matched, &method, &caller, resolved.as_ref())
                .map(Admission::Forward);
        }
        let route = snapshot
            .routes()
            .find(ctx.host.as_deref(), path)
            .ok_or(Rejection::NoRoute)?;
        ctx.route = Some(route.id.clone());
        let caller = self.identify(route.access, route.mfa, session, ctx).await?;
        self.limit(&route.rate_limits, &caller, &route.id, ctx)
            .await?;
        authorize(route, &caller).map(Admission::Forward)
    }

    /// The rate-limit stage: counts the request under every limit of `classes`.
    async fn limit(
        &self,
        classes: &[Arc<LimitClass>],
        caller: &Caller,
        route: &str,
        ctx: &RequestContext,
    ) -> Result<(), Rejection> {
        if classes.is_empty() {
            return Ok(());
        }
        let (user, account) = match caller {
            Caller::User(identity) => (Some(identity.user_id), Some(identity.account_id)),
            Caller::Anonymous => (None, None),
        };
        let subject = Subject {
            ip: client_ip(ctx)?,
            user,
            account,
            route,
            login: None,
        };
        self.limiter
            .check(classes, &subject)
            .await
            .map_err(Rejection::from)
    }

    /// The login endpoint answered by the directory's own server (FlexMeasures): the
    /// per-address login limits apply (the body, and so the login name, is not read
    /// here), then the request goes there as it is.
    async fn pass_login_through(
        &self,
        backend: &str,
        ctx: &mut RequestContext,
    ) -> Result<Admission, Rejection> {
        let subject = Subject {
            ip: client_ip(ctx)?,
            user: None,
            account: None,
            route: LOGIN_ROUTE,
            login: None,
        };
        self.limiter
            .check(ctx.snapshot.login_limits(), &subject)
            .await
            .map_err(Rejection::from)?;
        Ok(Admission::Forward(login_pass_through(LOGIN_ROUTE, backend)))
    }

    /// `POST /api/requestAuthToken`: reads the JSON body, applies the login limits
    /// and lockouts, checks the password, answers with a token.
    async fn login(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        authenticator: &Authenticator,
    ) -> Result<Admission, Rejection> {
        if session.req_header().method != http::Method::POST {
            return Err(Rejection::LoginMethod);
        }
        let guard = self
            .guard
            .as_ref()
            .ok_or_else(|| Rejection::Internal("login guard missing".into()))?;
        let body = read_body(session, MAX_LOGIN_BODY).await?;
        let attempt = LoginAttempt::parse(&body);
        let email = attempt.as_ref().ok().map(|a| a.email.clone());
        let snapshot = ctx.snapshot.clone();
        let subject = Subject {
            ip: client_ip(ctx)?,
            user: None,
            account: None,
            route: LOGIN_ROUTE,
            login: email.as_deref(),
        };
        let limits = login_limits(&snapshot);
        guard.admit(limits, &subject).await?;
        let attempt = attempt.map_err(|_| Rejection::MalformedLogin)?;
        let outcome = authenticator.login(attempt).await;
        self.metrics.login(match &outcome {
            Ok(_) => "issued",
            Err(LoginError::Malformed | LoginError::BadCredentials) => "refused",
            Err(LoginError::Unavailable(_)) => "unavailable",
        });
        match outcome {
            Ok(issued) => {
                respond::issued(session, ctx, &issued)
                    .await
                    .map_err(|e| Rejection::Internal(e.to_string()))?;
                Ok(Admission::Answered)
            }
            Err(LoginError::Malformed) => Err(Rejection::MalformedLogin),
            Err(LoginError::BadCredentials) => {
                guard.failed(limits, &subject, &ctx.request_id).await;
                Err(Rejection::LoginFailed)
            }
            Err(LoginError::Unavailable(cause)) => Err(Rejection::CredentialsUnavailable { cause }),
        }
    }

    /// One of the web login's pages: the form body (POST), cookies and whether the
    /// browser says the request comes from this site go to `login`; its answer is
    /// written back.
    async fn web_page(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        web_login: &WebLogin,
        path: &str,
    ) -> Result<Admission, Rejection> {
        let method = session.req_header().method.clone();
        let form = if method == http::Method::POST {
            Form::parse(&read_body(session, MAX_LOGIN_BODY).await?)
        } else {
            Form::default()
        };
        let headers = &session.req_header().headers;
        let cookies = cookies_of(headers);
        let same_site = from_this_site(headers, ctx.host.as_deref());
        let snapshot = ctx.snapshot.clone();
        let query = ctx
            .target
            .as_ref()
            .and_then(|t| t.query())
            .map(str::to_owned);
        let request = PageRequest {
            method: &method,
            path,
            query: query.as_deref(),
            cookies: &cookies,
            form,
            same_origin: same_site,
            client_ip: client_ip(ctx)?,
            request_id: &ctx.request_id,
        };
        let answer = web_login
            .answer(request, login_limits(&snapshot), snapshot.second_factor())
            .await;
        respond::page(session, ctx, answer)
            .await
            .map_err(|e| Rejection::Internal(e.to_string()))?;
        Ok(Admission::Answered)
    }

    /// The resource a rule is about: its owner and consultancy accounts, from the
    /// cache or the directory's database. A missing resource is refused (404 or 403
    /// as declared); a lookup that fails is refused with 503 (fail closed).
    async fn resolve(
        &self,
        reference: &ResourceRef,
        captures: &[(String, String)],
    ) -> Result<Option<Resolved>, Rejection> {
        let resource = &reference.resource;
        let unavailable = |cause: String| Rejection::LookupUnavailable {
            resource: resource.name.to_string(),
            cause,
        };
        let key = captures
            .iter()
            .find(|(name, _)| *name == reference.parameter)
            .map(|(_, value)| value.clone())
            .ok_or_else(|| unavailable("path parameter missing".into()))?;
        let resolved = match resource.cached(&key) {
            Some(resolved) => resolved,
            // Not an id: no such resource, and nothing to ask the database.
            None if resource.integer_key && key.parse::<i64>().is_err() => None,
            None => {
                let authenticator = self
                    .authenticator
                    .as_ref()
                    .ok_or_else(|| unavailable("no directory database".into()))?;
                let row = Box::pin(authenticator.resolve(resource.query.clone(), key.clone()))
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let resolved = row.map(|(owner, consultancy)| Resolved {
                    owner: owner.map(|id| id.to_string()),
                    consultancy: consultancy.map(|id| id.to_string()),
                });
                resource.remember(&key, resolved.clone());
                resolved
            }
        };
        match resolved {
            Some(resolved) => Ok(Some(resolved)),
            None if resource.missing_is_not_found => Err(Rejection::NoRoute),
            None => Err(Rejection::Forbidden {
                route: format!("resource {}", resource.name),
                permission: "find",
            }),
        }
    }

    /// The identify stage: a token where the route takes tokens (and one is sent, or
    /// sessions are not an option), else a session cookie where it takes sessions.
    /// Remembers a verified identity for the later phases.
    async fn identify(
        &self,
        access: Access,
        mfa: bool,
        session: &Session,
        ctx: &mut RequestContext,
    ) -> Result<Caller, Rejection> {
        let request = session.req_header();
        let takes_tokens = matches!(access, Access::Token | Access::TokenOrSession);
        let takes_sessions = matches!(access, Access::Session | Access::TokenOrSession);
        let web_login = self.web_login.as_deref().filter(|_| takes_sessions);
        let caller = if access == Access::Public {
            Caller::Anonymous
        } else if takes_tokens
            && (web_login.is_none() || request.headers.contains_key(http::header::AUTHORIZATION))
        {
            identify(request, self.authenticator.as_deref(), &self.metrics).await?
        } else if let Some(web_login) = web_login {
            match Box::pin(web_login.caller(&cookies_of(&request.headers))).await? {
                Some(caller) if mfa && !caller.complete => {
                    return Err(if wants_html(request) {
                        Rejection::SignIn {
                            location: web_login.second_factor_location(&next_of(ctx)),
                        }
                    } else {
                        Rejection::SecondFactorRequired
                    });
                }
                Some(caller) => {
                    // SECURITY: browsers attach the cookie to requests other sites
                    // make; only this site may change state with it.
                    if !request.method.is_safe()
                        && !from_this_site(&request.headers, ctx.host.as_deref())
                    {
                        return Err(Rejection::CrossSite);
                    }
                    Caller::User(caller.identity)
                }
                None => Caller::Anonymous,
            }
        } else {
            Caller::Anonymous
        };
        match &caller {
            Caller::User(identity) => ctx.identity = Some(identity.clone()),
            Caller::Anonymous => {
                if let Some(web_login) = web_login
                    && wants_html(request)
                {
                    return Err(Rejection::SignIn {
                        location: web_login.sign_in_location(&next_of(ctx)),
                    });
                }
            }
        }
        Ok(caller)
    }
}

/// The limits of a snapshot for the password logins.
fn login_limits(snapshot: &Snapshot) -> LoginLimits<'_> {
    LoginLimits {
        attempts: snapshot.login_limits(),
        failures: snapshot.login_failures(),
        lockout: snapshot.lockout(),
    }
}

fn cookies_of(headers: &http::HeaderMap) -> Cookies {
    Cookies::parse(
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// Whether the browser says the request comes from this site (`Origin`,
/// `Sec-Fetch-Site`; see `login::same_origin`).
fn from_this_site(headers: &http::HeaderMap, host: Option<&str>) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    same_origin(text("origin"), text("sec-fetch-site"), host)
}

/// A browser navigating (it asks for HTML with GET or HEAD): it is sent to the login
/// page rather than given a 401.
fn wants_html(request: &RequestHeader) -> bool {
    (request.method == http::Method::GET || request.method == http::Method::HEAD)
        && request
            .headers
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|accept| accept.to_str().is_ok_and(|a| a.contains("text/html")))
}

/// Where the login should bring the browser back to: this request's canonical target.
fn next_of(ctx: &RequestContext) -> String {
    ctx.target.as_ref().map_or_else(
        || "/".to_owned(),
        crate::canonical::CanonicalTarget::path_and_query,
    )
}

/// The route id under which login requests are logged and audited.
pub const LOGIN_ROUTE: &str = "portcullis:login";

/// Facts about the request, then strip: the client, the canonical target and the host.
/// Returns the canonical path.
fn locate(session: &mut Session, ctx: &mut RequestContext) -> Result<String, Rejection> {
    let peer = session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(std::net::SocketAddr::ip)
        .ok_or_else(|| Rejection::Internal("connection has no peer address".into()))?;

    // Read what trusted proxies said about the client before stripping it.
    let client = ForwardedFor::read(
        peer,
        &session.req_header().headers,
        ctx.snapshot.trusted_proxies(),
    );
    if let Some(id) = client.upstream_request_id() {
        ctx.request_id = id.to_owned();
    }
    ctx.client = Some(client);

    let header = session.req_header();
    if let Err(framing) = crate::framing::check(header.version, &header.headers) {
        // The rest of the stream cannot be read safely: answer, then close.
        session.set_keepalive(None);
        return Err(Rejection::AmbiguousFraming(framing));
    }

    let target =
        canonicalize(session.req_header().raw_path()).map_err(Rejection::AmbiguousTarget)?;
    let plan = Strip::plan(&session.req_header().headers);
    strip(session.req_header_mut(), &plan);
    ctx.host = context::request_host(session.req_header())?;
    Ok(ctx.target.insert(target).path().to_owned())
}

/// The verified owner of the token in `Authorization`, or anonymous without one.
async fn identify(
    request: &RequestHeader,
    authenticator: Option<&Authenticator>,
    metrics: &Metrics,
) -> Result<Caller, Rejection> {
    let mut values = request.headers.get_all(http::header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(Caller::Anonymous),
        (Some(value), None) => value,
        // SECURITY: two credentials; which one would a backend read?
        (Some(_), Some(_)) => {
            return Err(Rejection::InvalidCredentials {
                reason: "several Authorization headers",
            });
        }
    };
    let Some(authenticator) = authenticator else {
        return Err(Rejection::InvalidCredentials {
            reason: "no directory configured to verify tokens",
        });
    };
    match authenticator.identify(value.as_bytes()).await {
        Ok(verified) => {
            metrics.token_check(match verified.path {
                VerificationPath::Cached => TokenCheck::Cached,
                VerificationPath::Verified => TokenCheck::Verified,
            });
            Ok(Caller::User(verified.identity))
        }
        Err(IdentityError::Invalid(reason)) => {
            metrics.token_check(TokenCheck::Refused);
            Err(Rejection::InvalidCredentials { reason })
        }
        Err(IdentityError::Unavailable(cause)) => {
            metrics.token_check(TokenCheck::Unavailable);
            Err(Rejection::CredentialsUnavailable { cause })
        }
    }
}

/// The client's address, as the gateway verified it in `locate`.
fn client_ip(ctx: &RequestContext) -> Result<std::net::IpAddr, Rejection> {
    ctx.client
        .as_ref()
        .map(|client| client.client_ip)
        .ok_or_else(|| Rejection::Internal("client address missing".into()))
}

/// Reads a whole request body of at most `limit` bytes (413 beyond).
async fn read_body(session: &mut Session, limit: usize) -> Result<Vec<u8>, Rejection> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Rejection::BodyTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(Rejection::BadRequest),
        }
    }
}

/// JSON bodies up to this size are read and checked before the backend is contacted
/// (pingora keeps them in its retry buffer, which is this large, to send on).
const CHECKED_BEFORE_CONNECTING: usize = 64 * 1024;

/// In front of FlexMeasures, tokens outside `Authorization` are refused or removed
/// (`forwarding::auth_token`): the query now; a JSON body now when it is small
/// (nothing reaches the backend if it is refused), else as it streams through
/// [`guard_body`].
async fn guard_tokens(session: &mut Session, ctx: &mut RequestContext) -> Result<(), Rejection> {
    use crate::forwarding::auth_token::{BodyGuard, is_json, query_has_token, strip_query};
    let Some((mode, limit)) = ctx.snapshot.token_guard() else {
        return Ok(());
    };
    let strip = mode == TokenInRequest::Strip;
    if let Some(target) = ctx.target.as_mut()
        && let Some(query) = target.query()
        && query_has_token(query)
    {
        if !strip {
            return Err(Rejection::TokenInRequest { place: "query" });
        }
        let kept = strip_query(query);
        target.set_query(kept);
    }
    let headers = &session.req_header().headers;
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let content_type = match (types.next(), types.next()) {
        (None, _) => return Ok(()),
        (Some(value), None) => value.to_str().map_err(|_| Rejection::BadRequest)?,
        // SECURITY: which one would the backend use?
        (Some(_), Some(_)) => return Err(Rejection::BadRequest),
    };
    let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if !(has_body && is_json(content_type)) {
        return Ok(());
    }
    let mut guard = BodyGuard::new(limit, strip);
    let small = !headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|length| length <= CHECKED_BEFORE_CONNECTING);
    if small {
        session.enable_retry_buffering();
        let body = read_body(session, CHECKED_BEFORE_CONNECTING).await?;
        guard.push(&body).map_err(body_rejection)?;
        ctx.checked_body = Some(guard.finish().map_err(body_rejection)?);
    } else {
        ctx.body_guard = Some(guard);
    }
    Ok(())
}

fn body_rejection(error: crate::forwarding::auth_token::BodyError) -> Rejection {
    use crate::forwarding::auth_token::BodyError;
    match error {
        BodyError::Token => Rejection::TokenInRequest { place: "JSON body" },
        BodyError::Malformed => Rejection::MalformedJson,
        BodyError::TooLarge => Rejection::BodyTooLarge,
    }
}

/// `request_body_filter`: a guarded JSON body is collected (nothing goes upstream
/// meanwhile), checked at its end, and forwarded whole, or the request is stopped.
fn guard_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestContext,
) -> Result<()> {
    if let Some(checked) = ctx.checked_body.take() {
        // Read and checked before connecting; pingora passes on what it kept of the
        // body, replaced here by what may go on.
        *body = Some(checked);
        return Ok(());
    }
    let Some(guard) = ctx.body_guard.as_mut() else {
        return Ok(());
    };
    let outcome = match body.take() {
        Some(chunk) => guard.push(&chunk),
        None => Ok(()),
    };
    let outcome = outcome.and_then(|()| {
        if end_of_stream {
            guard.finish().map(Some)
        } else {
            Ok(None)
        }
    });
    match outcome {
        // An empty chunk is not written (a `None` would end the body upstream).
        Ok(None) => {
            *body = Some(Bytes::new());
            Ok(())
        }
        Ok(Some(whole)) => {
            *body = Some(whole);
            Ok(())
        }
        Err(error) => {
            // SECURITY: the backend got the head and nothing of the body, and the
            // connection is dropped: it can read no token from it.
            ctx.body_refusal = Some(body_rejection(error));
            Err(Error::explain(
                ErrorType::InternalError,
                "request body refused",
            ))
        }
    }
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
    // From the String itself: the URI keeps its bytes instead of copying them.
    let uri = http::Uri::try_from(target.path_and_query())
        .or_err(ErrorType::InternalError, "canonical target is not a URI")?;
    headers::edit_request(upstream_request, |request| {
        request.uri = uri;
        let forwarding = client.headers(ctx.host.as_deref(), &ctx.request_id);
        let signed = Signed {
            request_id: &ctx.request_id,
            method: request.method.as_str(),
            path_and_query: request
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str),
            now: crate::directory::now(),
        };
        let identity = identity_headers(ctx.identity.as_deref(), ctx.snapshot.signer(), &signed);
        let map = &mut request.headers;
        // Room for every insert below, so none of them grows the map or can panic.
        map.try_reserve(forwarding.len() + identity.len() + 1)
            .or_err(ErrorType::InternalError, "too many request headers")?;
        if let Some(checked) = &ctx.checked_body {
            // The checked body may be shorter (stripped).
            map.insert(http::header::CONTENT_LENGTH, checked.len().into());
        } else if ctx.body_guard.is_some() {
            // The inspected body may change length (stripped): send it chunked.
            map.remove(http::header::CONTENT_LENGTH);
            map.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        let cookies = crate::forwarding::cookies_for_backend(
            map.get_all(http::header::COOKIE)
                .iter()
                .map(http::HeaderValue::as_bytes),
        );
        if let Some(kept) = cookies {
            map.remove(http::header::COOKIE);
            if let Some(kept) = kept {
                let kept = http::HeaderValue::try_from(kept).or_err(
                    ErrorType::InternalError,
                    "kept cookies are not a header value",
                )?;
                map.insert(http::header::COOKIE, kept);
            }
        }
        for (name, value) in forwarding.into_iter().chain(identity) {
            map.insert(name, value);
        }
        Ok(())
    })
}
