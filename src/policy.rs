//! Fifth stage of the flow: may this caller do this? Deny unless a rule allows it.
//!
//! [`authorize`] is the only way to obtain a [`Permit`], and forwarding requires one,
//! so no code path can reach a backend without passing here (CONVENTIONS 3).
//! With policy files (`[policies]`), [`authorize_rule`] decides by the matched rule:
//! its `auth` mode, then its allow list (`policy::principal`) and the built-in roles;
//! a refusal is 403. With `[[route]]` tables only, [`authorize`] decides by the
//! route's `auth` mode: `public` admits anyone; `token` and `token-or-session` admit a
//! caller with a verified token; `session` needs a web-login session, which no
//! caller has yet.

pub mod cases;
pub mod diff;
pub mod file;
pub mod principal;
pub mod rules;
pub mod template;

use std::sync::Arc;

use crate::identity::Caller;
use crate::rejection::Rejection;
use crate::route::{Access, Route};

/// Proof that a request was authorized: which route decided and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    route: Arc<str>,
    backend: Arc<str>,
    /// Why a policy rule allowed it (for the audit record).
    because: Option<String>,
}

impl Permit {
    /// The id of the route that allowed the request.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Why a policy rule allowed the request, when one decided.
    pub fn because(&self) -> Option<&str> {
        self.because.as_deref()
    }

    /// The backend the request may be forwarded to.
    pub fn backend(&self) -> &str {
        &self.backend
    }
}

/// Decides whether `caller` may do what `matched` guards (policy files): the rule's
/// `auth` mode first, then its allow list and the built-in roles.
pub fn authorize_rule(
    matched: &rules::Matched<'_>,
    method: &str,
    caller: &Caller,
    resolved: Option<&rules::Resolved>,
) -> Result<Permit, Rejection> {
    let rule = matched.rule;
    let permit = |because: String| Permit {
        route: rule.id.clone(),
        backend: rule.backend.clone(),
        because: Some(because),
    };
    let identity = match (rule.access, caller) {
        (Access::Public, _) => return Ok(permit("public".into())),
        (Access::Token | Access::Session | Access::TokenOrSession, Caller::User(identity)) => {
            identity
        }
        // SECURITY: fail closed, as for `[[route]]` routes.
        (access, _) => {
            return Err(Rejection::Unauthenticated {
                route: rule.id.to_string(),
                needed: access.name(),
            });
        }
    };
    // `{owner}` and `{consultancy}` come from the resource lookup (NULL reads as "",
    // which no id equals and `public:{owner}` matches); other names from the path.
    let value = |name: &str| match (name, resolved) {
        ("owner", Some(resolved)) => Some(resolved.owner.as_deref().unwrap_or("")),
        ("consultancy", Some(resolved)) => Some(resolved.consultancy.as_deref().unwrap_or("")),
        _ => matched.parameter(name),
    };
    match (rule.decide(identity, method, value), rule.mode) {
        (rules::Verdict::Allowed { because }, _) => Ok(permit(because)),
        (rules::Verdict::Denied { permission }, rules::Mode::Shadow) => Ok(permit(format!(
            "shadow: would refuse `{}` without a matching principal",
            permission.name()
        ))),
        (rules::Verdict::Denied { permission }, rules::Mode::Enforce) => {
            Err(Rejection::Forbidden {
                route: rule.id.to_string(),
                permission: permission.name(),
            })
        }
    }
}

/// The login endpoint passed through to the backend that answers it (FlexMeasures,
/// with `login = "pass-through"`): public, as the login itself is.
pub fn login_pass_through(route: &str, backend: &str) -> Permit {
    Permit {
        route: route.into(),
        backend: backend.into(),
        because: Some("login passed through to the directory's server".into()),
    }
}

/// Decides whether `caller` may use `route`.
pub fn authorize(route: &Route, caller: &Caller) -> Result<Permit, Rejection> {
    match (route.access, caller) {
        (Access::Public, _) => Ok(Permit {
            route: route.id.clone(),
            backend: route.backend.clone(),
            because: None,
        }),
        // The identify stage verified the credential the route takes: on a session
        // route only a session cookie, never a token.
        (Access::Token | Access::Session | Access::TokenOrSession, Caller::User(_)) => Ok(Permit {
            route: route.id.clone(),
            backend: route.backend.clone(),
            because: None,
        }),
        // SECURITY: fail closed; a route that needs credentials never admits an
        // anonymous caller.
        (
            access @ (Access::Token | Access::Session | Access::TokenOrSession),
            Caller::Anonymous,
        ) => Err(Rejection::Unauthenticated {
            route: route.id.to_string(),
            needed: access.name(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::HostPattern;

    fn route(access: Access) -> Route {
        Route {
            id: "r".into(),
            host: HostPattern::Any,
            path_prefix: "/".into(),
            backend: "b".into(),
            access,
            mfa: true,
            rate_limits: Vec::new(),
        }
    }

    #[test]
    fn public_routes_admit_anonymous_callers() {
        let permit = authorize(&route(Access::Public), &Caller::Anonymous).expect("permit");
        assert_eq!(permit.route(), "r");
        assert_eq!(permit.backend(), "b");
    }

    #[test]
    fn protected_routes_admit_verified_users() {
        let user = Caller::User(Arc::new(crate::identity::Identity {
            user_id: 1,
            account_id: 1,
            email: "ann@example.com".into(),
            roles: vec![],
            account_roles: vec![],
        }));
        assert!(authorize(&route(Access::Token), &user).is_ok());
        assert!(authorize(&route(Access::TokenOrSession), &user).is_ok());
        assert!(authorize(&route(Access::Session), &user).is_ok());
    }

    #[test]
    fn protected_routes_refuse_anonymous_callers() {
        for access in [Access::Token, Access::Session, Access::TokenOrSession] {
            assert_eq!(
                authorize(&route(access), &Caller::Anonymous),
                Err(Rejection::Unauthenticated {
                    route: "r".into(),
                    needed: access.name()
                })
            );
        }
    }
}
