//! Responses the gateway writes itself, security headers on every TLS response, and
//! the per-request log line.

use std::borrow::Cow;

use bytes::Bytes;
use http::HeaderValue;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use pingora::{ErrorSource, ErrorType};

use super::RequestContext;
use crate::audit::{Audit, DecisionRecord};
use crate::forwarding::{ForwardedFor, REQUEST_ID};
use crate::metrics::{Decision, Metrics};
use crate::rejection::Rejection;

const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// Writes the fixed response for a refusal and records why, for the log.
pub async fn refuse(
    session: &mut Session,
    ctx: &mut RequestContext,
    rejection: Rejection,
) -> Result<()> {
    let refusal = rejection.response();
    tracing::debug!(request_id = %ctx.request_id, reason = %rejection, "refused");
    let mut header = ResponseHeader::build(refusal.status, Some(8))?;
    header.insert_header(CONTENT_TYPE, "application/json")?;
    header.insert_header(CONTENT_LENGTH, refusal.body.len().to_string())?;
    header.insert_header(CACHE_CONTROL, "no-store")?;
    for (name, value) in refusal.headers {
        header.insert_header(*name, *value)?;
    }
    for (name, value) in rejection.dynamic_headers() {
        header.insert_header(name, value)?;
    }
    ctx.refusal = Some(rejection);
    secure(&mut header, ctx)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from_static(refusal.body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

/// The login endpoint's answer: `{"auth_token": …, "user_id": …}` (the shape
/// FlexMeasures clients expect).
pub async fn issued(
    session: &mut Session,
    ctx: &mut RequestContext,
    issued: &crate::identity::Issued,
) -> Result<()> {
    ctx.issued_to = Some(issued.user_id);
    let body = serde_json::json!({
        "auth_token": issued.token.expose(),
        "user_id": issued.user_id,
    })
    .to_string();
    let mut header = ResponseHeader::build(200, Some(8))?;
    header.insert_header(CONTENT_TYPE, "application/json")?;
    header.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(CACHE_CONTROL, "no-store")?;
    secure(&mut header, ctx)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// A page of the web login (or its redirect), with the headers every page has:
/// the Content-Security-Policy, no caching, no framing, no referrer beyond the site.
pub async fn page(
    session: &mut Session,
    ctx: &mut RequestContext,
    answer: crate::login::Answer,
) -> Result<()> {
    ctx.page = Some(answer.note);
    ctx.page_user = answer.user;
    let mut header = ResponseHeader::build(answer.status, Some(12))?;
    if !answer.html.is_empty() {
        header.insert_header(CONTENT_TYPE, "text/html; charset=utf-8")?;
    }
    header.insert_header(CONTENT_LENGTH, answer.html.len().to_string())?;
    header.insert_header(CACHE_CONTROL, "no-store")?;
    header.insert_header(
        "content-security-policy",
        crate::login::pages::CONTENT_SECURITY_POLICY.as_str(),
    )?;
    header.insert_header("x-frame-options", "DENY")?;
    header.insert_header("referrer-policy", "same-origin")?;
    for (name, value) in answer.headers {
        // Several cookies are several headers (RFC 6265 §3).
        header.append_header(name, value)?;
    }
    secure(&mut header, ctx)?;
    let head_only = session.req_header().method == http::Method::HEAD || answer.html.is_empty();
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(answer.html)), true)
            .await?;
    }
    Ok(())
}

/// HSTS and the request id on every TLS response (RFC 6797 §7.1); `nosniff` unless the
/// backend chose otherwise.
pub fn secure(header: &mut ResponseHeader, ctx: &RequestContext) -> Result<()> {
    super::headers::edit_response(header, |response| {
        let map = &mut response.headers;
        // Room for every insert below, so none of them grows the map or can panic.
        map.try_reserve(3)
            .or_err(ErrorType::InternalError, "too many response headers")?;
        map.insert(STRICT_TRANSPORT_SECURITY, ctx.snapshot.hsts().clone());
        map.entry(X_CONTENT_TYPE_OPTIONS).or_insert(NOSNIFF);
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            map.insert(REQUEST_ID, id);
        }
        Ok(())
    })
}

/// Maps a proxying failure to a refusal; writes it unless a response already started.
pub async fn failure(
    session: &mut Session,
    error: &Error,
    ctx: &mut RequestContext,
) -> FailToProxy {
    let backend = ctx
        .permit
        .as_ref()
        .map(|permit| permit.backend().to_owned())
        .unwrap_or_default();
    let rejection = match (ctx.body_refusal.take(), error.esource(), error.etype()) {
        (Some(rejection), _, _) => Some(rejection),
        (None, source, kind) => match (source, kind) {
            (
                ErrorSource::Upstream,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => Some(Rejection::BackendTimeout { backend }),
            (ErrorSource::Upstream, _) => Some(Rejection::BackendUnreachable { backend }),
            // The client went away or broke the protocol: nobody to answer, or pingora's 400.
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ) => None,
            (ErrorSource::Downstream, _) => Some(Rejection::BadRequest),
            (ErrorSource::Internal | ErrorSource::Unset, _) => {
                Some(Rejection::Internal(error.to_string()))
            }
        },
    };
    tracing::warn!(request_id = %ctx.request_id, error = %error, "proxying failed");
    let Some(rejection) = rejection else {
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    };
    let status = rejection.response().status;
    if session.response_written().is_none() {
        if let Err(write_error) = refuse(session, ctx, rejection).await {
            tracing::debug!(request_id = %ctx.request_id, error = %write_error, "could not send the error response");
        }
    } else {
        ctx.refusal = Some(rejection);
    }
    FailToProxy {
        error_code: status,
        can_reuse_downstream: false,
    }
}

/// One line per request. SECURITY: no headers and no query string (it may carry
/// tokens); the canonical path and ids only.
pub fn log(
    session: &Session,
    error: Option<&Error>,
    ctx: &RequestContext,
    metrics: &Metrics,
    audit: &Audit,
) {
    let code = session.response_written().map(|response| response.status);
    let status = code.map_or(0, |code| code.as_u16());
    let elapsed = ctx.started.elapsed();
    let decision = match (ctx.permit.is_some(), ctx.refusal.is_some()) {
        _ if ctx.issued_to.is_some() => Decision::TokenIssued,
        _ if ctx.page.is_some() => Decision::Page,
        (true, false) => Decision::Allowed,
        (true, true) => Decision::Failed,
        (false, _) => Decision::Refused,
    };
    let (mut user_text, mut account_text) = (itoa::Buffer::new(), itoa::Buffer::new());
    let user = ctx
        .identity
        .as_ref()
        .map(|identity| identity.user_id)
        .or(ctx.issued_to)
        .or(ctx.page_user)
        .map(|id| user_text.format(id));
    let account = ctx
        .identity
        .as_ref()
        .map(|identity| account_text.format(identity.account_id));
    metrics.request(
        ctx.route.as_deref().unwrap_or("-"),
        decision,
        code,
        elapsed.as_secs_f64(),
    );
    let client = ctx.client.as_ref().map(ForwardedFor::client_text);
    // Why the gateway refused, or why a policy rule allowed.
    let reason: Option<Cow<'_, str>> = match &ctx.refusal {
        Some(refusal) => Some(Cow::Owned(refusal.to_string())),
        None => ctx
            .permit
            .as_ref()
            .and_then(|permit| permit.because())
            .or(ctx.page)
            .map(Cow::Borrowed),
    };
    audit.decision(&DecisionRecord {
        time: crate::audit::now_millis(),
        kind: "decision",
        request_id: &ctx.request_id,
        client,
        user,
        account,
        method: session.req_header().method.as_str(),
        path: ctx.target.as_ref().map(|target| target.path()),
        route: ctx.route.as_deref(),
        decision: decision.label(),
        reason: reason.as_deref(),
        status,
        latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        bytes: session.as_downstream().body_bytes_sent(),
    });
    tracing::info!(
        target: "portcullis::request",
        request_id = %ctx.request_id,
        client = client.unwrap_or_default(),
        method = %session.req_header().method,
        path = ctx.target.as_ref().map_or("-", |target| target.path()),
        route = ctx.route.as_deref().unwrap_or("-"),
        status,
        latency_ms = format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
        reason = reason.as_deref().unwrap_or("-"),
        error = error.map(ToString::to_string).as_deref().unwrap_or("-"),
        "request"
    );
}
