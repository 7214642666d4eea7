//! Policy test cases (`policies/tests/*.toml`), run by `portcullis policy test`:
//! a request and an identity, and the decision and rule expected.
//!
//! ```toml
//! [[case]]
//! name = "members read their account's data"
//! request = "GET /accounts/1/data/x"        # METHOD PATH; host with `host = "…"`
//! identity = { user = 5, account = 1, roles = ["account-admin"], account_roles = [] }
//! expect = "allow"                          # allow | deny | unauthenticated | no-route
//! rule = "account-data-read"                # optional
//! ```
//!
//! Omit `identity` for an anonymous request. Rules with a `resource` get its accounts
//! from the case: `resource = { owner = 1, consultancy = 3 }` (nothing is looked up).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::rules::RuleSet;
use crate::identity::{Caller, Identity};
use crate::rejection::Rejection;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: String,
    pub host: Option<String>,
    pub identity: Option<CaseIdentity>,
    pub expect: Expect,
    pub rule: Option<String>,
    /// What the rule's resource lookup would return (tests run offline).
    pub resource: Option<CaseResource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseResource {
    pub owner: Option<i64>,
    pub consultancy: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseIdentity {
    pub user: i64,
    pub account: i64,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub account_roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    Allow,
    Deny,
    Unauthenticated,
    NoRoute,
}

/// What the rules decided for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Expect,
    /// The rule that decided, if any matched.
    pub rule: Option<String>,
    /// Why (the principal that allowed, or the refusal).
    pub reason: String,
}

/// Decides one request offline, exactly as the gateway would.
pub fn decide(
    rules: &RuleSet,
    host: Option<&str>,
    method: &str,
    path: &str,
    identity: Option<Identity>,
    resolved: Option<&super::rules::Resolved>,
) -> Outcome {
    let Some(matched) = rules.find(host, method, path) else {
        return Outcome {
            decision: Expect::NoRoute,
            rule: None,
            reason: "no rule matches".into(),
        };
    };
    let caller = match identity {
        Some(identity) => Caller::User(Arc::new(identity)),
        None => Caller::Anonymous,
    };
    let rule = Some(matched.rule.id.to_string());
    match super::authorize_rule(&matched, method, &caller, resolved) {
        Ok(permit) => Outcome {
            decision: Expect::Allow,
            rule,
            reason: permit.because().unwrap_or("allowed").to_owned(),
        },
        Err(rejection @ Rejection::Unauthenticated { .. }) => Outcome {
            decision: Expect::Unauthenticated,
            rule,
            reason: rejection.to_string(),
        },
        Err(rejection) => Outcome {
            decision: Expect::Deny,
            rule,
            reason: rejection.to_string(),
        },
    }
}

/// One case's result.
#[derive(Debug)]
pub struct Checked {
    pub file: PathBuf,
    pub case: Case,
    pub outcome: Result<Outcome, String>,
    pub passed: bool,
}

/// Runs every case in `dir/*.toml`; a file that cannot be read is an error.
pub fn run(rules: &RuleSet, dir: &Path) -> Result<Vec<Checked>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut checked = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
        let cases: CaseFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for case in cases.case {
            let outcome = match case.request.trim().split_once(' ') {
                Some((method, path)) => Ok(decide(
                    rules,
                    case.host.as_deref(),
                    method,
                    path.trim(),
                    case.identity.as_ref().map(|i| Identity {
                        user_id: i.user,
                        account_id: i.account,
                        email: String::new(),
                        roles: i.roles.clone(),
                        account_roles: i.account_roles.clone(),
                    }),
                    case.resource
                        .as_ref()
                        .map(|r| super::rules::Resolved {
                            owner: r.owner.map(|id| id.to_string()),
                            consultancy: r.consultancy.map(|id| id.to_string()),
                        })
                        .as_ref(),
                )),
                None => Err(format!(
                    "`request` is `METHOD PATH`, not `{}`",
                    case.request
                )),
            };
            let passed = outcome.as_ref().is_ok_and(|o| {
                o.decision == case.expect
                    && case
                        .rule
                        .as_ref()
                        .is_none_or(|r| o.rule.as_deref() == Some(r))
            });
            checked.push(Checked {
                file: file.clone(),
                case,
                outcome,
                passed,
            });
        }
    }
    Ok(checked)
}
