//! `portcullis policy test` and `portcullis policy explain`: the policy files as the
//! gateway would apply them, without starting it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::admin::ConfigArg;
use super::{EXIT_CONFIG, EXIT_FAILURE, color};
use crate::config::{self, Config};
use crate::identity::Identity;
use crate::policy::cases::{self, Expect};
use crate::policy::rules::RuleSet;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run the policy test cases (default: `tests/*.toml` in the policy directory).
    ///
    /// Each case gives a request, an identity (or none) and the expected decision
    /// (allow, deny, unauthenticated, no-route) and, optionally, the deciding rule.
    /// Exits 1 when a case fails.
    Test {
        /// Directory of case files.
        #[arg(long)]
        cases: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List who gains or loses access between two policy directories.
    ///
    /// Rules are compared by id: `+` access gained, `-` access lost, `~` other
    /// changes (path, methods, auth, mode). Both directories are checked against the
    /// configuration's backends.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show which rule decides a request and why each principal matches or not.
    ///
    /// The caller is a user from the directory (--user) or described by hand
    /// (--account, --roles, --account-roles); with neither, anonymous.
    Explain {
        /// e.g. GET
        method: String,
        /// e.g. /api/v3_0/assets/7 (canonical)
        path: String,
        #[arg(long)]
        host: Option<String>,
        /// Look the caller up in the directory by email.
        #[arg(long, conflicts_with_all = ["account", "roles", "account_roles"])]
        user: Option<String>,
        /// The caller's account id (by hand).
        #[arg(long)]
        account: Option<i64>,
        /// The caller's user roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// The caller's account roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        account_roles: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The configuration and its policy rules, or the exit code.
fn rules(path: &Path) -> Result<(Config, std::sync::Arc<RuleSet>), ExitCode> {
    let loaded = config::load(path);
    if loaded.report.has_errors() {
        eprint!("{}", loaded.report.render(color()));
    }
    let Some(config) = loaded.config else {
        return Err(ExitCode::from(EXIT_CONFIG));
    };
    match config.rules.clone() {
        Some(rules) => Ok((config, rules)),
        None => {
            eprintln!(
                "error: {} has no `[policies] dir`; policy tools work on policy files",
                path.display()
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

pub fn execute(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Test { cases, config } => test(&config.config, cases),
        PolicyCommand::Diff { old, new, config } => diff(&config.config, &old, &new),
        PolicyCommand::Explain {
            method,
            path,
            host,
            user,
            account,
            roles,
            account_roles,
            config,
        } => {
            let caller = Caller {
                user,
                account,
                roles,
                account_roles,
            };
            explain(&config.config, &method, &path, host.as_deref(), caller)
        }
    }
}

fn test(config_path: &Path, cases_dir: Option<PathBuf>) -> ExitCode {
    let (config, rules) = match rules(config_path) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let dir = cases_dir.unwrap_or_else(|| {
        config
            .policies_dir
            .clone()
            .unwrap_or_default()
            .join("tests")
    });
    let checked = match cases::run(&rules, &dir) {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let failed = checked.iter().filter(|c| !c.passed).count();
    for case in &checked {
        let mark = if case.passed { "ok  " } else { "FAIL" };
        println!("{mark} {}", case.case.name);
        if !case.passed {
            match &case.outcome {
                Ok(outcome) => println!(
                    "     {}: expected {:?}{}, got {:?} by rule {} ({})",
                    case.file.display(),
                    case.case.expect,
                    case.case
                        .rule
                        .as_ref()
                        .map(|r| format!(" by rule {r}"))
                        .unwrap_or_default(),
                    outcome.decision,
                    outcome.rule.as_deref().unwrap_or("-"),
                    outcome.reason
                ),
                Err(error) => println!("     {}: {error}", case.file.display()),
            }
        }
    }
    println!("{} case(s), {failed} failed", checked.len());
    if checked.is_empty() {
        eprintln!("error: no cases in `{}`", dir.display());
        return ExitCode::from(EXIT_FAILURE);
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

fn diff(config_path: &Path, old: &Path, new: &Path) -> ExitCode {
    let loaded = config::load(config_path);
    let Some(config) = loaded.config else {
        eprint!("{}", loaded.report.render(color()));
        return ExitCode::from(EXIT_CONFIG);
    };
    let inputs = crate::policy::file::Inputs::of(&config);
    let mut sets = Vec::new();
    for dir in [old, new] {
        let loaded = crate::policy::file::load(dir, &inputs);
        match loaded.rules {
            Some(rules) => sets.push(rules),
            None => {
                for report in loaded.reports.iter().filter(|r| !r.is_clean()) {
                    eprint!("{}", report.render(color()));
                }
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let (Some(old_rules), Some(new_rules)) = (sets.first(), sets.get(1)) else {
        return ExitCode::from(EXIT_FAILURE);
    };
    let lines = crate::policy::diff::diff(old_rules, new_rules);
    if lines.is_empty() {
        println!("no change in who may reach what");
    }
    for line in lines {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Who to explain for.
struct Caller {
    user: Option<String>,
    account: Option<i64>,
    roles: Vec<String>,
    account_roles: Vec<String>,
}

fn explain(
    config_path: &Path,
    method: &str,
    path: &str,
    host: Option<&str>,
    caller: Caller,
) -> ExitCode {
    let (config, rules) = match rules(config_path) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let identity = match (&caller.user, caller.account) {
        (Some(email), _) => match directory_identity(&config, email) {
            Ok(identity) => Some(identity),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
        (None, Some(account)) => Some(Identity {
            user_id: 0,
            account_id: account,
            email: String::new(),
            roles: caller.roles,
            account_roles: caller.account_roles,
        }),
        (None, None) => None,
    };
    let method = method.to_ascii_uppercase();
    let Some(matched) = rules.find(host, &method, path) else {
        println!("{method} {path}: no rule matches; refused with 404 (deny by default)");
        return ExitCode::SUCCESS;
    };
    let rule = matched.rule;
    let permission = rule
        .permission
        .unwrap_or_else(|| crate::policy::rules::Permission::of_method(&method));
    println!(
        "{method} {path}: rule `{}` ({} {}, auth {}, permission {}{})",
        rule.id,
        rule.methods.join("|"),
        rule.template,
        rule.access.name(),
        permission.name(),
        if rule.mode == crate::policy::rules::Mode::Shadow {
            ", shadow"
        } else {
            ""
        }
    );
    if !matched.captures.is_empty() {
        let parameters: Vec<String> = matched
            .captures
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  path parameters: {}", parameters.join(", "));
    }
    println!("  rate limits: {}", rule.rate_limit_text());
    match &identity {
        Some(identity) => {
            println!(
                "  caller: user {}, account {}, roles [{}], account roles [{}]",
                identity.user_id,
                identity.account_id,
                identity.roles.join(", "),
                identity.account_roles.join(", ")
            );
            let value = |name: &str| matched.parameter(name);
            let has = |role: &str| identity.roles.iter().any(|r| r == role);
            println!(
                "  built-in: role:admin {}, role:admin-reader {}",
                yes_no(has("admin")),
                if permission == crate::policy::rules::Permission::Read {
                    yes_no(has("admin-reader"))
                } else {
                    "does not apply (not read)"
                }
            );
            for (index, group) in rule.allow.explain(identity, value).iter().enumerate() {
                let parts: Vec<String> = group
                    .iter()
                    .map(|(principal, matched)| format!("{principal} {}", yes_no(*matched)))
                    .collect();
                println!(
                    "  allow [{}]: {}",
                    index + 1,
                    if parts.is_empty() {
                        "(empty: never)".into()
                    } else {
                        parts.join(" and ")
                    }
                );
            }
            if rule.allow.any_of.is_empty() {
                println!("  allow: [] (built-in roles only)");
            }
        }
        None => println!("  caller: anonymous"),
    }
    if let Some(reference) = &rule.resource {
        println!(
            "  resource: `{}` by {{{}}}; not looked up here, so {{owner}} and {{consultancy}} match nobody",
            reference.resource.name, reference.parameter
        );
    }
    let outcome = cases::decide(&rules, host, &method, path, identity, None);
    let decision = match outcome.decision {
        Expect::Allow => "allow",
        Expect::Deny => "deny (403)",
        Expect::Unauthenticated => "unauthenticated (401)",
        Expect::NoRoute => "no route (404)",
    };
    println!("  decision: {decision}: {}", outcome.reason);
    ExitCode::SUCCESS
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn directory_identity(config: &Config, email: &str) -> Result<Identity, String> {
    crate::identity::with_directory(config, async |directory| {
        let user = directory.user(email).await.map_err(|e| e.to_string())?;
        Ok(Identity {
            user_id: user.id,
            account_id: user.account_id,
            email: user.email,
            roles: user.roles,
            account_roles: user.account_roles,
        })
    })
    .map_err(|e| e.to_string())?
}
