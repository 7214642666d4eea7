//! Who a policy rule allows, in FlexMeasures' principal grammar (DESIGN §5).
//!
//! - `user:<id>`, `account:<id>`: one user or account by id;
//! - `role:<name>`, `account-role:<name>`: a user role or an account role;
//! - `every-logged-in-user`: any verified user;
//! - `user:{name}`, `account:{name}`: relations to the request — the caller's id
//!   equals the value named `name`: a path parameter (`account:{account}` on
//!   `/accounts/{account}`) or a resolved resource attribute (`account:{owner}`,
//!   `account:{consultancy}`). A value that is missing never matches (fail closed).
//! - `public:{owner}`: any verified user, when the request's resource was found and
//!   has no owner (FlexMeasures' public assets); only for resolved attributes.
//!
//! An allow list is OR; a nested list is AND (`["account:{owner}", ["role:consultant",
//! "account:{consultancy}"]]`); an empty list, at either level, never matches.

use crate::identity::Identity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(i64),
    Account(i64),
    Role(String),
    AccountRole(String),
    EveryLoggedInUser,
    /// `user:{name}`: the caller's user id equals the named value.
    UserRelation(String),
    /// `account:{name}`: the caller's account id equals the named value.
    AccountRelation(String),
    /// `public:{name}`: the resource was found and the named attribute is empty.
    Unowned(String),
}

pub const KINDS: &[&str] = &[
    "user:",
    "account:",
    "role:",
    "account-role:",
    "every-logged-in-user",
    "public:",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error(
        "unknown principal `{0}`: use user:ID, account:ID, role:NAME, account-role:NAME, every-logged-in-user, user:{{NAME}}, account:{{NAME}} or public:{{owner}}"
    )]
    Unknown(String),
    #[error("`{0}`: expected a numeric id or `{{name}}`")]
    BadId(String),
    #[error("`{0}`: expected a role name")]
    BadRole(String),
}

impl Principal {
    pub fn parse(text: &str) -> Result<Self, PrincipalError> {
        let text = text.trim();
        if text == "every-logged-in-user" {
            return Ok(Self::EveryLoggedInUser);
        }
        let (kind, value) = text
            .split_once(':')
            .ok_or_else(|| PrincipalError::Unknown(text.to_owned()))?;
        let relation = value
            .strip_prefix('{')
            .and_then(|v| v.strip_suffix('}'))
            .filter(|name| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        let id = || {
            value
                .parse::<i64>()
                .map_err(|_| PrincipalError::BadId(text.to_owned()))
        };
        let role = || {
            crate::directory::validate_role(value)
                .map(|()| value.to_owned())
                .map_err(|_| PrincipalError::BadRole(text.to_owned()))
        };
        match (kind, relation) {
            ("user", Some(name)) => Ok(Self::UserRelation(name.to_owned())),
            ("account", Some(name)) => Ok(Self::AccountRelation(name.to_owned())),
            ("public", Some(name)) => Ok(Self::Unowned(name.to_owned())),
            ("user", None) => Ok(Self::User(id()?)),
            ("account", None) => Ok(Self::Account(id()?)),
            ("role", _) => Ok(Self::Role(role()?)),
            ("account-role", _) => Ok(Self::AccountRole(role()?)),
            _ => Err(PrincipalError::Unknown(text.to_owned())),
        }
    }

    /// Whether `identity` is this principal; `value` looks up named request values.
    pub fn matches<'v>(
        &self,
        identity: &Identity,
        value: impl Fn(&str) -> Option<&'v str>,
    ) -> bool {
        let equals =
            |name: &str, id: i64| value(name).is_some_and(|v| v == itoa::Buffer::new().format(id));
        match self {
            Self::User(id) => identity.user_id == *id,
            Self::Account(id) => identity.account_id == *id,
            Self::Role(role) => identity.roles.iter().any(|r| r == role),
            Self::AccountRole(role) => identity.account_roles.iter().any(|r| r == role),
            Self::EveryLoggedInUser => true,
            Self::UserRelation(name) => equals(name, identity.user_id),
            Self::AccountRelation(name) => equals(name, identity.account_id),
            // A resolved attribute that is NULL reads as "" (see `authorize_rule`).
            Self::Unowned(name) => value(name) == Some(""),
        }
    }

    /// The named request value this principal needs, if any.
    pub fn relation(&self) -> Option<&str> {
        match self {
            Self::UserRelation(name) | Self::AccountRelation(name) | Self::Unowned(name) => {
                Some(name)
            }
            _ => None,
        }
    }
}

impl Principal {
    /// The principal as written in a policy file, in pieces; `digits` holds an id's.
    fn pieces<'a>(&'a self, digits: &'a mut itoa::Buffer) -> [&'a str; 3] {
        match self {
            Self::User(id) => ["user:", digits.format(*id), ""],
            Self::Account(id) => ["account:", digits.format(*id), ""],
            Self::Role(role) => ["role:", role, ""],
            Self::AccountRole(role) => ["account-role:", role, ""],
            Self::EveryLoggedInUser => ["every-logged-in-user", "", ""],
            Self::UserRelation(name) => ["user:{", name, "}"],
            Self::AccountRelation(name) => ["account:{", name, "}"],
            Self::Unowned(name) => ["public:{", name, "}"],
        }
    }

    /// Appends what `Display` shows, without the formatter: a permitted request names
    /// the principals that admitted it.
    pub fn push_text(&self, out: &mut String) {
        for piece in self.pieces(&mut itoa::Buffer::new()) {
            out.push_str(piece);
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.pieces(&mut itoa::Buffer::new())
            .into_iter()
            .try_for_each(|piece| f.write_str(piece))
    }
}

/// An allow list: OR of AND groups. Empty lists never match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allow {
    pub any_of: Vec<Vec<Principal>>,
}

impl Allow {
    /// Whether `identity` satisfies one group completely.
    pub fn matches<'v>(
        &self,
        identity: &Identity,
        value: impl Fn(&str) -> Option<&'v str> + Copy,
    ) -> bool {
        self.any_of.iter().any(|group| {
            !group.is_empty()
                && group
                    .iter()
                    .all(|principal| principal.matches(identity, value))
        })
    }

    /// Each group with each principal's outcome, for `policy explain`.
    pub fn explain<'v>(
        &self,
        identity: &Identity,
        value: impl Fn(&str) -> Option<&'v str> + Copy,
    ) -> Vec<Vec<(String, bool)>> {
        self.any_of
            .iter()
            .map(|group| {
                group
                    .iter()
                    .map(|p| (p.to_string(), p.matches(identity, value)))
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Identity {
        Identity {
            user_id: 7,
            account_id: 3,
            email: "ann@example.com".into(),
            roles: vec!["consultant".into()],
            account_roles: vec!["Prosumer".into()],
        }
    }

    fn p(text: &str) -> Principal {
        Principal::parse(text).expect(text)
    }

    #[test]
    fn principals_parse_in_flexmeasures_grammar_and_print_back() {
        for text in [
            "user:7",
            "account:3",
            "role:admin-reader",
            "account-role:MyService-subscriber",
            "every-logged-in-user",
            "user:{self}",
            "account:{owner}",
            "public:{sensor}",
            "user:-1",
        ] {
            assert_eq!(p(text).to_string(), text);
        }
        assert!(matches!(
            Principal::parse("acount:3"),
            Err(PrincipalError::Unknown(_))
        ));
        assert!(matches!(
            Principal::parse("user:ann"),
            Err(PrincipalError::BadId(_))
        ));
        assert!(matches!(
            Principal::parse("role:a,b"),
            Err(PrincipalError::BadRole(_))
        ));
        assert!(matches!(
            Principal::parse("everyone"),
            Err(PrincipalError::Unknown(_))
        ));
    }

    #[test]
    fn principals_match_the_identity_and_relations_the_request() {
        let values = |name: &str| match name {
            "owner" => Some("3"),
            "consultancy" => Some("9"),
            _ => None,
        };
        let ann = ann();
        assert!(p("user:7").matches(&ann, values));
        assert!(!p("user:8").matches(&ann, values));
        assert!(p("role:consultant").matches(&ann, values));
        assert!(!p("role:admin").matches(&ann, values));
        assert!(p("account-role:Prosumer").matches(&ann, values));
        assert!(p("account:{owner}").matches(&ann, values));
        assert!(!p("account:{consultancy}").matches(&ann, values));
        // SECURITY: a value that could not be found never matches.
        assert!(!p("account:{missing}").matches(&ann, values));
        assert!(p("every-logged-in-user").matches(&ann, values));
    }

    #[test]
    fn public_matches_only_a_found_resource_without_an_owner() {
        let public = Principal::parse("public:{owner}").expect("parse");
        assert_eq!(public.to_string(), "public:{owner}");
        assert!(public.matches(&ann(), |_| Some("")), "found, no owner");
        assert!(!public.matches(&ann(), |_| Some("3")), "owned");
        assert!(
            !public.matches(&ann(), |_| None),
            "not looked up: fail closed"
        );
        // And an empty owner is nobody's account.
        let owner = Principal::parse("account:{owner}").expect("parse");
        assert!(!owner.matches(&ann(), |_| Some("")));
    }

    #[test]
    fn lists_are_or_nested_lists_and_and_empty_lists_never_match() {
        let ann = ann();
        let values = |name: &str| (name == "owner").then_some("4");
        let allow = |groups: Vec<Vec<&str>>| Allow {
            any_of: groups
                .into_iter()
                .map(|g| g.into_iter().map(p).collect())
                .collect(),
        };
        assert!(
            allow(vec![vec!["account:{owner}"], vec!["role:consultant"]]).matches(&ann, values)
        );
        assert!(!allow(vec![vec!["account:{owner}", "role:consultant"]]).matches(&ann, values));
        assert!(!allow(vec![]).matches(&ann, values));
        assert!(!allow(vec![vec![]]).matches(&ann, values));
        let explained =
            allow(vec![vec!["role:consultant", "account:{owner}"]]).explain(&ann, values);
        assert_eq!(
            explained,
            vec![vec![
                ("role:consultant".to_owned(), true),
                ("account:{owner}".to_owned(), false)
            ]]
        );
    }
}
