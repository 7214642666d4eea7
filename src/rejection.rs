//! Every refusal the gateway makes, and the one place it becomes an HTTP response.
//!
//! Stages return a [`Rejection`]; [`Rejection::response`] maps it to a status, a fixed
//! body and the headers the refusal needs, in one exhaustive `match` (CONVENTIONS 4).
//! Clients never see causes: those go to the log with the request id.

use crate::canonical::AmbiguousTarget;

/// Why a request was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("ambiguous request target: {0}")]
    AmbiguousTarget(AmbiguousTarget),
    #[error("request has no usable host")]
    BadHost,
    #[error("malformed request")]
    BadRequest,
    #[error("no route matches the request")]
    NoRoute,
    #[error("route `{route}` needs {needed} credentials and none were verified")]
    Unauthenticated { route: String, needed: &'static str },
    /// The caller is known and the matching policy rule does not allow this.
    #[error("rule `{route}` does not allow this caller to `{permission}`")]
    Forbidden {
        route: String,
        permission: &'static str,
    },
    /// A credential was presented and refused: malformed, forged, expired, revoked,
    /// or its user is gone or inactive.
    #[error("credentials refused: {reason}")]
    InvalidCredentials { reason: &'static str },
    /// The resource a policy rule depends on could not be looked up.
    #[error("resource `{resource}` cannot be looked up: {cause}")]
    LookupUnavailable { resource: String, cause: String },
    /// Credentials could not be checked (a store is down, the password pool is full).
    #[error("credentials cannot be checked: {cause}")]
    CredentialsUnavailable { cause: String },
    #[error("login request is not JSON with `email` and `password`")]
    MalformedLogin,
    #[error("login refused: wrong email or password, or inactive user")]
    LoginFailed,
    #[error("method not allowed on the login endpoint")]
    LoginMethod,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("backend `{backend}` refused or dropped the connection")]
    BackendUnreachable { backend: String },
    #[error("backend `{backend}` did not answer in time")]
    BackendTimeout { backend: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the client receives for a [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// A fixed JSON body; never contains request data or causes.
    pub body: &'static str,
    /// Extra headers: `WWW-Authenticate` on 401s (RFC 9110 §11.6.1), `Retry-After` on
    /// 503s, `Allow` on 405s.
    pub headers: &'static [(&'static str, &'static str)],
}

const CHALLENGE: &[(&str, &str)] = &[("www-authenticate", r#"Bearer realm="portcullis""#)];
// RFC 6750 §3.1: the token was presented and is not acceptable.
const INVALID_TOKEN: &[(&str, &str)] = &[(
    "www-authenticate",
    r#"Bearer realm="portcullis", error="invalid_token""#,
)];
const RETRY_SOON: &[(&str, &str)] = &[("retry-after", "1")];
const POST_ONLY: &[(&str, &str)] = &[("allow", "POST")];

impl Rejection {
    pub fn response(&self) -> Refusal {
        let (status, body, headers): (u16, &'static str, &'static [(&str, &str)]) = match self {
            Self::AmbiguousTarget(_) => (
                400,
                r#"{"status":400,"message":"Bad request: the request target is ambiguous."}"#,
                &[],
            ),
            Self::BadHost => (
                400,
                r#"{"status":400,"message":"Bad request: missing or invalid Host."}"#,
                &[],
            ),
            Self::BadRequest => (400, r#"{"status":400,"message":"Bad request."}"#, &[]),
            Self::NoRoute => (404, r#"{"status":404,"message":"Not found."}"#, &[]),
            Self::Unauthenticated { .. } => (
                401,
                r#"{"status":401,"message":"Authentication required."}"#,
                CHALLENGE,
            ),
            Self::BackendUnreachable { .. } => (
                502,
                r#"{"status":502,"message":"Bad gateway: the service is unavailable."}"#,
                &[],
            ),
            Self::BackendTimeout { .. } => (
                504,
                r#"{"status":504,"message":"Gateway timeout: the service did not answer in time."}"#,
                &[],
            ),
            Self::InvalidCredentials { .. } => (
                401,
                r#"{"status":401,"message":"Authentication failed: the token is invalid, expired or revoked."}"#,
                INVALID_TOKEN,
            ),
            Self::Forbidden { .. } => (
                403,
                r#"{"status":403,"message":"Forbidden: you may not do this."}"#,
                &[],
            ),
            Self::LookupUnavailable { .. } => (
                503,
                r#"{"status":503,"message":"Service unavailable: the request cannot be checked right now, retry shortly."}"#,
                RETRY_SOON,
            ),
            Self::CredentialsUnavailable { .. } => (
                503,
                r#"{"status":503,"message":"Service unavailable: credentials cannot be checked right now, retry shortly."}"#,
                RETRY_SOON,
            ),
            Self::MalformedLogin => (
                400,
                r#"{"status":400,"message":"Bad request: send a JSON object {\"email\": \"...\", \"password\": \"...\"}."}"#,
                &[],
            ),
            Self::LoginFailed => (
                401,
                r#"{"status":401,"message":"Wrong email or password."}"#,
                CHALLENGE,
            ),
            Self::LoginMethod => (
                405,
                r#"{"status":405,"message":"Method not allowed: use POST."}"#,
                POST_ONLY,
            ),
            Self::BodyTooLarge => (
                413,
                r#"{"status":413,"message":"Request body too large."}"#,
                &[],
            ),
            Self::Internal(_) => (500, r#"{"status":500,"message":"Internal error."}"#, &[]),
        };
        Refusal {
            status,
            body,
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_never_carry_the_cause() {
        let rejections = [
            Rejection::AmbiguousTarget(AmbiguousTarget::DotSegment),
            Rejection::BadHost,
            Rejection::BadRequest,
            Rejection::NoRoute,
            Rejection::Unauthenticated {
                route: "secret-route".into(),
                needed: "token",
            },
            Rejection::BackendUnreachable {
                backend: "secret-backend".into(),
            },
            Rejection::BackendTimeout {
                backend: "secret-backend".into(),
            },
            Rejection::InvalidCredentials {
                reason: "secret reason",
            },
            Rejection::CredentialsUnavailable {
                cause: "secret cause".into(),
            },
            Rejection::Forbidden {
                route: "secret-route".into(),
                permission: "read",
            },
            Rejection::LookupUnavailable {
                resource: "secret-resource".into(),
                cause: "secret cause".into(),
            },
            Rejection::MalformedLogin,
            Rejection::LoginFailed,
            Rejection::LoginMethod,
            Rejection::BodyTooLarge,
            Rejection::Internal("secret detail".into()),
        ];
        for rejection in rejections {
            let refusal = rejection.response();
            assert!(
                !refusal.body.contains("secret"),
                "{rejection:?} leaks its cause"
            );
            let parsed: serde_json::Value = serde_json::from_str(refusal.body).expect("json");
            assert_eq!(parsed["status"], refusal.status);
        }
    }

    #[test]
    fn unauthenticated_carries_a_challenge() {
        let refusal = Rejection::Unauthenticated {
            route: "r".into(),
            needed: "token",
        }
        .response();
        assert_eq!(refusal.status, 401);
        assert!(
            refusal
                .headers
                .iter()
                .any(|(name, _)| *name == "www-authenticate")
        );
        let refused = Rejection::InvalidCredentials { reason: "expired" }.response();
        assert!(refused.headers.contains(&(
            "www-authenticate",
            r#"Bearer realm="portcullis", error="invalid_token""#
        )));
    }
}
