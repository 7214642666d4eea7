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
    /// `WWW-Authenticate` for 401s (RFC 9110 §11.6.1).
    pub www_authenticate: Option<&'static str>,
}

impl Rejection {
    pub fn response(&self) -> Refusal {
        let (status, body, www_authenticate) = match self {
            Self::AmbiguousTarget(_) => (
                400,
                r#"{"status":400,"message":"Bad request: the request target is ambiguous."}"#,
                None,
            ),
            Self::BadHost => (
                400,
                r#"{"status":400,"message":"Bad request: missing or invalid Host."}"#,
                None,
            ),
            Self::BadRequest => (400, r#"{"status":400,"message":"Bad request."}"#, None),
            Self::NoRoute => (404, r#"{"status":404,"message":"Not found."}"#, None),
            Self::Unauthenticated { .. } => (
                401,
                r#"{"status":401,"message":"Authentication required."}"#,
                Some(r#"Bearer realm="portcullis""#),
            ),
            Self::BackendUnreachable { .. } => (
                502,
                r#"{"status":502,"message":"Bad gateway: the service is unavailable."}"#,
                None,
            ),
            Self::BackendTimeout { .. } => (
                504,
                r#"{"status":504,"message":"Gateway timeout: the service did not answer in time."}"#,
                None,
            ),
            Self::Internal(_) => (500, r#"{"status":500,"message":"Internal error."}"#, None),
        };
        Refusal {
            status,
            body,
            www_authenticate,
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
        assert!(refusal.www_authenticate.is_some());
    }
}
