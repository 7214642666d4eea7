//! Policy rules and their decision: which rule a request falls under, and whether
//! the caller may do what the rule guards.
//!
//! A [`Rule`] joins a request shape (host pattern, methods, path template) to a
//! backend, an `auth` mode, the permission the request exercises and an allow list.
//! [`RuleSet`] compiles rules once: per host pattern, one path-template trie per
//! method, so finding a request's rule costs the same with ten rules or ten thousand.
//! Deny by default: no rule, no access; a rule's empty allow list admits nobody but
//! the built-in roles.
//!
//! Built-in roles (DESIGN §2, §5): `role:admin` passes every permission,
//! `role:admin-reader` passes `read`. A rule in `shadow` mode never refuses: what it
//! would have refused is reported so operators can try a rule before enforcing it.

use std::sync::Arc;

use super::principal::Allow;
use super::template::{Captures, Template, Templates};
use crate::identity::Identity;
use crate::route::{Access, ConfigMap, HostPattern, match_host};

/// What a request does to its resource (FlexMeasures' permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    CreateChildren,
    Update,
    Delete,
}

impl Permission {
    pub const NAMES: &'static [&'static str] = &["read", "create-children", "update", "delete"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "create-children" => Some(Self::CreateChildren),
            "update" => Some(Self::Update),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    /// The permission a method exercises when a rule does not say.
    pub fn of_method(method: &str) -> Self {
        match method {
            "GET" | "HEAD" | "OPTIONS" => Self::Read,
            "POST" => Self::CreateChildren,
            "DELETE" => Self::Delete,
            _ => Self::Update,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::CreateChildren => "create-children",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Log would-be refusals, admit anyway.
    Shadow,
}

/// The methods a rule covers.
pub const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// How a rule finds the resource a request is about (`[resources.NAME]`): a query
/// on the directory's database that maps a path parameter to the owner account and
/// the owner's consultancy account, cached for `ttl`.
#[derive(Debug)]
pub struct Resource {
    pub name: Arc<str>,
    /// `SELECT owner, consultancy FROM … WHERE id = $1`.
    pub query: Arc<str>,
    /// What a missing resource gets: 404 (`true`) or 403.
    pub missing_is_not_found: bool,
    /// `key = "integer"`: a parameter that is not a whole number names no resource
    /// (missing, without a lookup); otherwise it is passed as text.
    pub integer_key: bool,
    cache: moka::sync::Cache<String, Option<Resolved>>,
}

/// A resource's accounts, as principal relations see them (`{owner}`, `{consultancy}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub owner: Option<String>,
    pub consultancy: Option<String>,
}

impl Resource {
    pub fn new(
        name: &str,
        query: &str,
        ttl: std::time::Duration,
        missing_is_not_found: bool,
        integer_key: bool,
    ) -> Self {
        Self {
            name: name.into(),
            query: query.into(),
            missing_is_not_found,
            integer_key,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// A cached lookup: `Some(None)` means "known to be missing".
    pub fn cached(&self, key: &str) -> Option<Option<Resolved>> {
        self.cache.get(key)
    }

    pub fn remember(&self, key: &str, resolved: Option<Resolved>) {
        self.cache.insert(key.to_owned(), resolved);
    }
}

/// Which resource a rule is about: a resource name and the path parameter that
/// identifies it (`resource = "asset:{id}"`).
#[derive(Debug, Clone)]
pub struct ResourceRef {
    pub resource: Arc<Resource>,
    pub parameter: String,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Arc<str>,
    pub host: HostPattern,
    /// Upper-case, from [`METHODS`]; all of them for `*`.
    pub methods: Vec<&'static str>,
    pub template: Template,
    pub backend: Arc<str>,
    pub access: Access,
    /// Whether a session must have passed the second factor.
    pub mfa: bool,
    /// `None`: the method's ([`Permission::of_method`]).
    pub permission: Option<Permission>,
    pub allow: Allow,
    pub mode: Mode,
    /// The resource the request is about, for `{owner}` and `{consultancy}`.
    pub resource: Option<ResourceRef>,
    /// Limit classes that apply, in order.
    pub rate_limits: Vec<Arc<crate::rate_limit::LimitClass>>,
}

impl Rule {
    /// The rule's limit classes with their limits, e.g. `api (500/min per user)`.
    pub fn rate_limit_text(&self) -> String {
        if self.rate_limits.is_empty() {
            return "none".into();
        }
        self.rate_limits
            .iter()
            .map(|class| format!("{} ({})", class.name, class.text))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Two rules that would decide the same requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub rule: Arc<str>,
    pub existing: Arc<str>,
    pub method: &'static str,
}

/// One host pattern's rules: a template trie per method.
#[derive(Debug, Default)]
struct HostRules {
    by_method: ConfigMap<&'static str, Templates<usize>>,
}

/// Rules compiled for lookup.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    exact: ConfigMap<String, HostRules>,
    /// Subdomain patterns, most specific first.
    subdomains: Vec<(HostPattern, HostRules)>,
    any: HostRules,
}

/// The rule a request falls under, with its path parameters.
#[derive(Debug)]
pub struct Matched<'s> {
    pub rule: &'s Rule,
    pub captures: Captures,
}

impl Matched<'_> {
    /// The value of a path parameter of the match.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.captures
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl RuleSet {
    /// Compiles rules; every pair that would decide the same requests is reported.
    pub fn build(rules: Vec<Rule>) -> Result<Self, Vec<Conflict>> {
        let mut set = Self::default();
        let mut conflicts = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let host = match &rule.host {
                HostPattern::Any => &mut set.any,
                HostPattern::Exact(name) => set.exact.entry(name.clone()).or_default(),
                pattern @ HostPattern::Subdomains(_) => {
                    if !set.subdomains.iter().any(|(p, _)| p == pattern) {
                        set.subdomains.push((pattern.clone(), HostRules::default()));
                    }
                    match set.subdomains.iter_mut().find(|(p, _)| p == pattern) {
                        Some((_, rules)) => rules,
                        None => continue,
                    }
                }
            };
            for method in &rule.methods {
                let templates = host.by_method.entry(method).or_default();
                if let Err(clash) = templates.insert(&rule.template, index) {
                    let existing = clash
                        .existing
                        .and_then(|i| rules.get(*i))
                        .map_or_else(|| Arc::from("?"), |r| r.id.clone());
                    conflicts.push(Conflict {
                        rule: rule.id.clone(),
                        existing,
                        method,
                    });
                }
            }
        }
        set.subdomains
            .sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.specificity()));
        set.rules = rules;
        if conflicts.is_empty() {
            Ok(set)
        } else {
            Err(conflicts)
        }
    }

    /// The rules, in the order they were given.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for a request: the most specific host pattern that has a rule for the
    /// method and path, and within it the most specific template.
    pub fn find(&self, host: Option<&str>, method: &str, path: &str) -> Option<Matched<'_>> {
        let host = host.map(match_host);
        let exact = host.as_deref().and_then(|h| self.exact.get(h));
        let subdomains = self
            .subdomains
            .iter()
            .filter(|(pattern, _)| host.as_deref().is_some_and(|h| pattern.matches(h)))
            .map(|(_, rules)| rules);
        exact
            .into_iter()
            .chain(subdomains)
            .chain(std::iter::once(&self.any))
            .find_map(|rules| rules.by_method.get(method)?.find(path))
            .and_then(|(index, captures)| {
                Some(Matched {
                    rule: self.rules.get(*index)?,
                    captures,
                })
            })
    }
}

/// What a rule says about an identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `because` names the principal or built-in role.
    Allowed { because: String },
    /// Refused (or, in shadow mode, would have been).
    Denied { permission: Permission },
}

impl Rule {
    /// Decides for a verified caller. `value` finds path parameters and resolved
    /// resource attributes by name.
    pub fn decide<'v>(
        &self,
        identity: &Identity,
        method: &str,
        value: impl Fn(&str) -> Option<&'v str> + Copy,
    ) -> Verdict {
        let permission = self
            .permission
            .unwrap_or_else(|| Permission::of_method(method));
        let has = |role: &str| identity.roles.iter().any(|r| r == role);
        if has("admin") {
            return Verdict::Allowed {
                because: "role:admin".into(),
            };
        }
        if permission == Permission::Read && has("admin-reader") {
            return Verdict::Allowed {
                because: "role:admin-reader".into(),
            };
        }
        for group in &self.allow.any_of {
            if !group.is_empty() && group.iter().all(|p| p.matches(identity, value)) {
                let mut because = String::with_capacity(32);
                for (index, principal) in group.iter().enumerate() {
                    if index > 0 {
                        because.push_str(" and ");
                    }
                    principal.push_text(&mut because);
                }
                return Verdict::Allowed { because };
            }
        }
        Verdict::Denied { permission }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::principal::Principal;

    fn rule(
        id: &str,
        host: &str,
        methods: &[&'static str],
        template: &str,
        allow: &[&[&str]],
    ) -> Rule {
        Rule {
            id: id.into(),
            host: HostPattern::parse(host).expect("host"),
            methods: methods.to_vec(),
            template: Template::parse(template).expect("template"),
            backend: "b".into(),
            access: Access::Token,
            mfa: true,
            permission: None,
            allow: Allow {
                any_of: allow
                    .iter()
                    .map(|g| {
                        g.iter()
                            .map(|p| Principal::parse(p).expect("principal"))
                            .collect()
                    })
                    .collect(),
            },
            mode: Mode::Enforce,
            rate_limits: Vec::new(),
            resource: None,
        }
    }

    fn identity(roles: &[&str], account: i64) -> Identity {
        Identity {
            user_id: 1,
            account_id: account,
            email: "a@example.com".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            account_roles: vec![],
        }
    }

    #[test]
    fn requests_find_the_most_specific_host_method_and_path() {
        let set = RuleSet::build(vec![
            rule("any-read", "*", &["GET"], "/api/{rest*}", &[]),
            rule("any-write", "*", &["POST"], "/api/assets", &[]),
            rule("asset", "*", &["GET", "HEAD"], "/api/assets/{id}", &[]),
            rule("tenant", "*.example.com", &["GET"], "/api/{rest*}", &[]),
            rule("exact", "fm.example.com", &["GET"], "/api/assets/{id}", &[]),
        ])
        .expect("no conflicts");
        let id = |host: Option<&str>, method: &str, path: &str| {
            set.find(host, method, path).map(|m| m.rule.id.to_string())
        };
        assert_eq!(id(None, "GET", "/api/assets/4").as_deref(), Some("asset"));
        assert_eq!(id(None, "GET", "/api/sensors").as_deref(), Some("any-read"));
        assert_eq!(
            id(None, "POST", "/api/assets").as_deref(),
            Some("any-write")
        );
        assert_eq!(id(None, "POST", "/api/assets/4"), None, "deny by default");
        assert_eq!(id(None, "DELETE", "/api/assets/4"), None);
        assert_eq!(
            id(Some("x.example.com"), "GET", "/api/assets/4").as_deref(),
            Some("tenant")
        );
        assert_eq!(
            id(Some("FM.example.com:8443"), "GET", "/api/assets/4").as_deref(),
            Some("exact")
        );
        // The exact host has no rule for this path: the next host pattern decides.
        assert_eq!(
            id(Some("fm.example.com"), "GET", "/api/x").as_deref(),
            Some("tenant")
        );
        let matched = set.find(None, "GET", "/api/assets/4").expect("match");
        assert_eq!(matched.captures, vec![("id".to_owned(), "4".to_owned())]);
    }

    #[test]
    fn rules_deciding_the_same_requests_conflict() {
        let conflicts = RuleSet::build(vec![
            rule("one", "*", &["GET", "POST"], "/a/{x}", &[]),
            rule("two", "*", &["POST"], "/a/{y}", &[]),
            rule("three", "*", &["DELETE"], "/a/{y}", &[]),
        ])
        .expect_err("conflict");
        assert_eq!(
            conflicts,
            vec![Conflict {
                rule: "two".into(),
                existing: "one".into(),
                method: "POST"
            }]
        );
    }

    #[test]
    fn built_in_roles_and_allow_lists_decide() {
        let owner_rule = rule(
            "r",
            "*",
            &["GET", "PATCH"],
            "/assets/{id}",
            &[&["account:{owner}"]],
        );
        let owner = |name: &str| (name == "owner").then_some("3");
        let allowed = |identity: &Identity, method: &str| {
            matches!(
                owner_rule.decide(identity, method, owner),
                Verdict::Allowed { .. }
            )
        };
        assert!(allowed(&identity(&[], 3), "PATCH"), "the owner's account");
        assert!(!allowed(&identity(&[], 4), "GET"), "another account");
        assert!(
            allowed(&identity(&["admin"], 4), "PATCH"),
            "admin passes everything"
        );
        assert!(
            allowed(&identity(&["admin-reader"], 4), "GET"),
            "admin-reader reads"
        );
        assert_eq!(
            owner_rule.decide(&identity(&["admin-reader"], 4), "PATCH", owner),
            Verdict::Denied {
                permission: Permission::Update
            },
            "admin-reader does not write"
        );
        let grouped = rule(
            "g",
            "*",
            &["GET"],
            "/x",
            &[&["user:9"], &["account:{owner}", "role:consultant"]],
        );
        assert_eq!(
            grouped.decide(&identity(&["consultant"], 3), "GET", owner),
            Verdict::Allowed {
                because: "account:{owner} and role:consultant".into()
            },
            "the group that admitted, every principal of it"
        );
        let nobody = rule("n", "*", &["GET"], "/x", &[]);
        assert!(matches!(
            nobody.decide(&identity(&["consultant"], 3), "GET", owner),
            Verdict::Denied { .. }
        ));
    }
}
