//! Fifth stage of the flow: may this caller do this? Deny unless a rule allows it.
//!
//! [`authorize`] is the only way to obtain a [`Permit`], and forwarding requires one,
//! so no code path can reach a backend without passing here (CONVENTIONS 3).
//! Today the rule is the route's `auth` mode: `public` routes admit anyone; `token`
//! and `token-or-session` routes admit a caller with a verified token; `session`
//! routes need a web-login session, which no caller has yet.

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
}

impl Permit {
    /// The id of the route that allowed the request.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The backend the request may be forwarded to.
    pub fn backend(&self) -> &str {
        &self.backend
    }
}

/// Decides whether `caller` may use `route`.
pub fn authorize(route: &Route, caller: &Caller) -> Result<Permit, Rejection> {
    match (route.access, caller) {
        (Access::Public, _) => Ok(Permit {
            route: route.id.clone(),
            backend: route.backend.clone(),
        }),
        (Access::Token | Access::TokenOrSession, Caller::User(_)) => Ok(Permit {
            route: route.id.clone(),
            backend: route.backend.clone(),
        }),
        // SECURITY: fail closed; a route that needs credentials never admits an
        // anonymous caller, and a session route is not reached with a token.
        (
            access @ (Access::Token | Access::Session | Access::TokenOrSession),
            Caller::Anonymous,
        )
        | (access @ Access::Session, Caller::User(_)) => Err(Rejection::Unauthenticated {
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
        }
    }

    #[test]
    fn public_routes_admit_anonymous_callers() {
        let permit = authorize(&route(Access::Public), &Caller::Anonymous).expect("permit");
        assert_eq!(permit.route(), "r");
        assert_eq!(permit.backend(), "b");
    }

    #[test]
    fn token_routes_admit_verified_users_and_session_routes_do_not() {
        let user = Caller::User(Arc::new(crate::identity::Identity {
            user_id: 1,
            account_id: 1,
            email: "ann@example.com".into(),
            roles: vec![],
            account_roles: vec![],
        }));
        assert!(authorize(&route(Access::Token), &user).is_ok());
        assert!(authorize(&route(Access::TokenOrSession), &user).is_ok());
        assert!(authorize(&route(Access::Session), &user).is_err());
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
