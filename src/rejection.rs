//! Every refusal the gateway makes, and the one place it becomes an HTTP response.
//!
//! Stages return a [`Rejection`]; [`Rejection::response`] maps it to a status, a fixed
//! body and the headers the refusal needs, in one exhaustive `match` (CONVENTIONS 4).
//! Clients never see causes: those go to the log with the request id.

use crate::canonical::AmbiguousTarget;
use crate::framing::AmbiguousFraming;

/// Why a request was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("ambiguous request target: {0}")]
    AmbiguousTarget(AmbiguousTarget),
    #[error("ambiguous message framing: {0}")]
    AmbiguousFraming(AmbiguousFraming),
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
    /// Over a rate limit; the next request under the same key passes after a wait.
    #[error("{0}")]
    RateLimited(Box<crate::rate_limit::Exceeded>),
    /// Login attempts under this key are refused until the lockout ends.
    #[error("login locked out after repeated failures ({key})")]
    LockedOut { key: String, retry_after: u64 },
    /// An access token outside `Authorization` (`?auth_token=`, a JSON body's
    /// `auth_token`), in front of FlexMeasures.
    #[error("access token in the {place}; only Authorization is accepted")]
    TokenInRequest { place: &'static str },
    /// A JSON body for FlexMeasures that does not parse.
    #[error("the JSON body does not parse")]
    MalformedJson,
    /// Rate limits could not be checked (Redis down and `on_store_error = "deny"`).
    #[error("rate limits cannot be checked: {cause}")]
    LimitsUnavailable { cause: String },
    /// A browser without a session on a route that takes sessions: sent to the
    /// login page (`location`), which brings it back.
    #[error("no web-login session; browser sent to log in")]
    SignIn { location: String },
    /// A session that has not passed the second factor, on an `mfa` route.
    #[error("the session has not passed the second factor")]
    SecondFactorRequired,
    /// A state-changing request carrying a session cookie, sent from another site.
    #[error("cross-site request with a session cookie")]
    CrossSite,
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
            Self::AmbiguousFraming(_) => (
                400,
                r#"{"status":400,"message":"Bad request: the message framing is ambiguous."}"#,
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
            // RFC 6585 §4; the wait is in `headers()`.
            Self::RateLimited(_) | Self::LockedOut { .. } => (
                429,
                r#"{"status":429,"message":"Too many requests: retry after the time in Retry-After."}"#,
                &[],
            ),
            Self::TokenInRequest { .. } => (
                400,
                r#"{"status":400,"message":"Bad request: send the access token in the Authorization header only."}"#,
                &[],
            ),
            Self::MalformedJson => (
                400,
                r#"{"status":400,"message":"Bad request: the JSON body does not parse."}"#,
                &[],
            ),
            Self::LimitsUnavailable { .. } => (
                503,
                r#"{"status":503,"message":"Service unavailable: the request cannot be checked right now, retry shortly."}"#,
                RETRY_SOON,
            ),
            // RFC 9110 §15.4.4: see other, by GET; the target is in `dynamic_headers()`.
            Self::SignIn { .. } => (303, r#"{"status":303,"message":"Log in first."}"#, &[]),
            Self::SecondFactorRequired => (
                401,
                r#"{"status":401,"message":"Authentication required: complete the second factor of the web login."}"#,
                CHALLENGE,
            ),
            Self::CrossSite => (
                403,
                r#"{"status":403,"message":"Forbidden: cross-site request."}"#,
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

impl Rejection {
    /// Headers whose values depend on the refusal: `Retry-After` (RFC 9110 §10.2.3)
    /// and the `RateLimit-Policy`/`RateLimit` fields of
    /// draft-ietf-httpapi-ratelimit-headers (structured fields: the policy's name,
    /// `q` quota units per `w` seconds; `r` remaining, `t` seconds until it resets).
    pub fn dynamic_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::RateLimited(exceeded) => {
                let wait = crate::rate_limit::local::whole_seconds(exceeded.retry_after);
                let name = &exceeded.policy;
                vec![
                    ("retry-after", wait.to_string()),
                    (
                        "ratelimit-policy",
                        format!(
                            "\"{name}\";q={};w={}",
                            exceeded.limit.count,
                            exceeded.limit.period.as_secs()
                        ),
                    ),
                    ("ratelimit", format!("\"{name}\";r=0;t={wait}")),
                ]
            }
            Self::LockedOut { retry_after, .. } => {
                vec![("retry-after", retry_after.max(&1).to_string())]
            }
            Self::SignIn { location } => vec![("location", location.clone())],
            _ => Vec::new(),
        }
    }
}

impl From<crate::rate_limit::LimitError> for Rejection {
    fn from(error: crate::rate_limit::LimitError) -> Self {
        use crate::rate_limit::LimitError;
        match error {
            LimitError::Exceeded(exceeded) => Self::RateLimited(Box::new(exceeded)),
            LimitError::Unavailable(cause) => Self::LimitsUnavailable { cause },
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
            Rejection::AmbiguousFraming(AmbiguousFraming::LengthAndEncoding),
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
            Rejection::LockedOut {
                key: "login=secret@example.com".into(),
                retry_after: 60,
            },
            Rejection::LimitsUnavailable {
                cause: "secret cause".into(),
            },
            Rejection::TokenInRequest { place: "query" },
            Rejection::MalformedJson,
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
    fn rate_limited_refusals_say_when_to_retry_and_which_limit() {
        let class = crate::rate_limit::LimitClass::parse("api", "500/min per user").expect("valid");
        let limit = class.limits.first().expect("one limit").clone();
        let rejection = Rejection::RateLimited(Box::new(crate::rate_limit::Exceeded {
            class: class.name.clone(),
            policy: limit.policy.clone(),
            limit: limit.limit,
            retry_after: std::time::Duration::from_millis(1200),
            key: "user=secret".into(),
        }));
        assert_eq!(rejection.response().status, 429);
        assert!(!rejection.response().body.contains("secret"));
        assert_eq!(
            rejection.dynamic_headers(),
            vec![
                ("retry-after", "2".to_owned()),
                ("ratelimit-policy", r#""api";q=500;w=60"#.to_owned()),
                ("ratelimit", r#""api";r=0;t=2"#.to_owned()),
            ]
        );
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
