//! `portcullis policy diff OLD NEW`: who gains or loses access, rule by rule.
//!
//! Rules are compared by id. For a rule in both versions, each allow group (an AND of
//! principals, written `a and b`) that appears only in the new version gains access,
//! one only in the old loses it; changes of `auth`, methods, path, mode or rate limits
//! are listed too, since they change who reaches what and how often.

use std::collections::{BTreeMap, BTreeSet};

use super::rules::{Mode, Rule, RuleSet};

fn groups(rule: &Rule) -> BTreeSet<String> {
    rule.allow
        .any_of
        .iter()
        .filter(|group| !group.is_empty())
        .map(|group| {
            let mut names: Vec<String> = group.iter().map(ToString::to_string).collect();
            names.sort();
            names.join(" and ")
        })
        .collect()
}

fn shape(rule: &Rule) -> String {
    format!("{} {}", rule.methods.join("|"), rule.template)
}

fn by_id(set: &RuleSet) -> BTreeMap<&str, &Rule> {
    set.rules()
        .iter()
        .map(|rule| (rule.id.as_ref(), rule))
        .collect()
}

/// One line per change, `+` for gained access, `-` for lost, `~` for other changes.
pub fn diff(old: &RuleSet, new: &RuleSet) -> Vec<String> {
    let (old, new) = (by_id(old), by_id(new));
    let mut lines = Vec::new();
    for (id, rule) in &old {
        if !new.contains_key(id) {
            lines.push(format!(
                "- {id} ({}): rule removed; its requests now get 404",
                shape(rule)
            ));
        }
    }
    for (id, rule) in &new {
        let Some(before) = old.get(id) else {
            let who: Vec<String> = groups(rule).into_iter().collect();
            lines.push(format!(
                "+ {id} ({}): new rule, auth {}, allows {}",
                shape(rule),
                rule.access.name(),
                if who.is_empty() {
                    "built-in roles only".into()
                } else {
                    who.join("; ")
                }
            ));
            continue;
        };
        if shape(before) != shape(rule) {
            lines.push(format!(
                "~ {id}: matches {} instead of {}",
                shape(rule),
                shape(before)
            ));
        }
        if before.access != rule.access {
            lines.push(format!(
                "~ {id}: auth {} instead of {}",
                rule.access.name(),
                before.access.name()
            ));
        }
        if before.mode != rule.mode {
            let name = |mode: Mode| {
                if mode == Mode::Shadow {
                    "shadow"
                } else {
                    "enforce"
                }
            };
            lines.push(format!(
                "~ {id}: mode {} instead of {}",
                name(rule.mode),
                name(before.mode)
            ));
        }
        if before.rate_limit_text() != rule.rate_limit_text() {
            lines.push(format!(
                "~ {id}: rate limits {} instead of {}",
                rule.rate_limit_text(),
                before.rate_limit_text()
            ));
        }
        let (was, is) = (groups(before), groups(rule));
        for gained in is.difference(&was) {
            lines.push(format!("+ {id}: {gained}"));
        }
        for lost in was.difference(&is) {
            lines.push(format!("- {id}: {lost}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::principal::{Allow, Principal};
    use crate::policy::rules::Mode;
    use crate::policy::template::Template;
    use crate::route::{Access, HostPattern};

    fn rule(id: &str, path: &str, allow: &[&[&str]]) -> Rule {
        Rule {
            id: id.into(),
            host: HostPattern::Any,
            methods: vec!["GET"],
            template: Template::parse(path).expect("template"),
            backend: "b".into(),
            access: Access::Token,
            mfa: true,
            permission: None,
            allow: Allow {
                any_of: allow
                    .iter()
                    .map(|g| g.iter().map(|p| Principal::parse(p).expect("p")).collect())
                    .collect(),
            },
            mode: Mode::Enforce,
            rate_limits: Vec::new(),
            resource: None,
        }
    }

    #[test]
    fn gained_and_lost_access_is_listed_per_rule() {
        let old = RuleSet::build(vec![
            rule("a", "/a", &[&["role:consultant"], &["account:{x}"]]),
            rule("gone", "/gone", &[]),
        ])
        .expect("old");
        let mut changed = rule(
            "a",
            "/a/{x}",
            &[&["account:{x}"], &["account-role:MDC", "role:consultant"]],
        );
        changed.mode = Mode::Shadow;
        let new = RuleSet::build(vec![
            changed,
            rule("fresh", "/fresh", &[&["every-logged-in-user"]]),
        ])
        .expect("new");
        assert_eq!(
            diff(&old, &new),
            vec![
                "- gone (GET /gone): rule removed; its requests now get 404".to_owned(),
                "~ a: matches GET /a/{x} instead of GET /a".to_owned(),
                "~ a: mode shadow instead of enforce".to_owned(),
                "+ a: account-role:MDC and role:consultant".to_owned(),
                "- a: role:consultant".to_owned(),
                "+ fresh (GET /fresh): new rule, auth token, allows every-logged-in-user"
                    .to_owned(),
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn changed_rate_limits_are_listed() {
        let old = RuleSet::build(vec![rule("a", "/a", &[])]).expect("old");
        let mut limited = rule("a", "/a", &[]);
        limited.rate_limits = vec![std::sync::Arc::new(
            crate::rate_limit::LimitClass::parse("api", "500/min per user").expect("class"),
        )];
        let new = RuleSet::build(vec![limited]).expect("new");
        assert_eq!(
            diff(&old, &new),
            vec!["~ a: rate limits api (500/min per user) instead of none".to_owned()]
        );
    }
}
