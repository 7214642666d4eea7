//! The `[rate_limits]` section: where budgets are kept, what happens when Redis
//! fails, the classes rules name, and the login endpoint's limits and lockouts.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::diagnostic::{Problem, nearest};
use super::{Check, raw};
use crate::rate_limit::spec::{Key, SpecError};
use crate::rate_limit::{
    Classes, LimitClass, OnStoreError, RateLimitSettings, Store, is_class_name,
};

impl Check<'_> {
    pub(super) fn rate_limits(
        &mut self,
        raw: raw::RateLimits,
        has_redis: bool,
    ) -> RateLimitSettings {
        let defaults = RateLimitSettings::default();
        let store = self
            .keyword(
                raw.store.as_ref(),
                &[("local", Store::Local), ("redis", Store::Redis)],
                Store::Local,
                "store",
                "use `local` (this instance) or `redis` (shared by every instance)",
            )
            .unwrap_or(Store::Local);
        if store == Store::Redis
            && !has_redis
            && let Some(text) = &raw.store
        {
            self.error(
                Problem::error("`store = \"redis\"` needs a `[redis]` section")
                    .at(text.span())
                    .help("add `[redis] url = \"redis://…\"`, or use `store = \"local\"`"),
            );
        }
        let on_store_error = self
            .keyword(
                raw.on_store_error.as_ref(),
                &[
                    ("local", OnStoreError::Local),
                    ("deny", OnStoreError::Deny),
                    ("allow", OnStoreError::Allow),
                ],
                OnStoreError::Local,
                "`on_store_error`",
                "use `local`, `deny` or `allow`",
            )
            .unwrap_or(OnStoreError::Local);
        let max_keys = self.count(raw.max_keys, defaults.max_keys, 100_000_000, "max_keys");
        let housekeeping_interval = self.duration(
            raw.housekeeping_interval,
            defaults.housekeeping_interval,
            Duration::from_secs(1)..Duration::from_secs(3601),
            "housekeeping_interval",
        );
        let ipv6_prefix = match raw.ipv6_prefix {
            None => defaults.ipv6_prefix,
            Some(value) => match u8::try_from(*value.get_ref()) {
                Ok(prefix) if (32..=128).contains(&prefix) => prefix,
                _ => {
                    self.error(
                        Problem::error("`ipv6_prefix` must be from 32 to 128")
                            .at(value.span())
                            .help("64 counts a host by its /64, the usual assignment"),
                    );
                    defaults.ipv6_prefix
                }
            },
        };
        let mut classes = Classes::new();
        for (name, text) in raw.classes.unwrap_or_default() {
            if let Some(class) = self.limit_class(&name, &text) {
                classes.insert(class.name.clone(), Arc::new(class));
            }
        }
        let default = match &raw.default {
            None => Vec::new(),
            Some(names) => names
                .get_ref()
                .0
                .iter()
                .filter_map(|name| {
                    let known = classes.get_key_value(name.as_str());
                    match known {
                        None => self.error(unknown_class(name, names.span(), &classes).help(
                            "`default` names classes of [rate_limits.classes] in this file",
                        )),
                        Some((_, class)) if class.uses(Key::Login) => self.error(
                            Problem::error(format!(
                                "default class `{name}` counts per `login`, which only the login endpoint knows"
                            ))
                            .at(names.span()),
                        ),
                        Some(_) => {}
                    }
                    known.map(|(name, _)| name.clone())
                })
                .collect(),
        };
        let login = self.login_class(raw.login.as_ref(), "login", defaults.login);
        let login_failures = self.login_class(
            raw.login_failures.as_ref(),
            "login-failures",
            defaults.login_failures,
        );
        let second_factor = self.login_class(
            raw.second_factor.as_ref(),
            "second-factor",
            defaults.second_factor,
        );
        let lockout = self.duration(
            raw.lockout,
            defaults.lockout,
            Duration::ZERO..Duration::from_secs(7 * 24 * 3600 + 1),
            "lockout",
        );
        RateLimitSettings {
            store,
            on_store_error,
            max_keys,
            housekeeping_interval,
            ipv6_prefix,
            classes,
            default,
            login,
            login_failures,
            lockout,
            second_factor,
        }
    }

    fn limit_class(
        &mut self,
        name: &Spanned<String>,
        text: &Spanned<String>,
    ) -> Option<LimitClass> {
        if !is_class_name(name.get_ref()) {
            self.error(
                Problem::error(format!("`{}` is not a valid class name", name.get_ref()))
                    .at(name.span())
                    .help("use letters, digits, `-`, `_` or `.`"),
            );
            return None;
        }
        match LimitClass::parse(name.get_ref(), text.get_ref()) {
            Ok(class) => Some(class),
            Err(error) => {
                self.error(spec_problem(&error, text.span()));
                None
            }
        }
    }

    /// `login` or `login_failures`: only `ip` and `login` are known before a login
    /// succeeds. `""` turns the limit off.
    fn login_class(
        &mut self,
        text: Option<&Spanned<String>>,
        name: &str,
        default: Option<Arc<LimitClass>>,
    ) -> Option<Arc<LimitClass>> {
        let Some(text) = text else {
            return default;
        };
        if text.get_ref().trim().is_empty() {
            return None;
        }
        let class = match LimitClass::parse(name, text.get_ref()) {
            Ok(class) => class,
            Err(error) => {
                self.error(spec_problem(&error, text.span()));
                return None;
            }
        };
        for key in [Key::User, Key::Account, Key::Route] {
            if class.uses(key) {
                self.error(
                    Problem::error(format!(
                        "a login limit cannot count per `{}`: nobody is logged in yet",
                        key.name()
                    ))
                    .at(text.span())
                    .help("count per `ip`, `login` (the name tried) or `ip+login`"),
                );
                return None;
            }
        }
        Some(Arc::new(class))
    }
}

/// A problem for a limit specification that does not parse.
pub fn spec_problem(error: &SpecError, span: Range<usize>) -> Problem {
    let problem = Problem::error(format!("invalid limit: {error}")).at(span);
    match error {
        SpecError::UnknownKey(key) => match nearest(key, Key::NAMES.iter().copied()) {
            Some(near) => problem.help(format!("did you mean `{near}`?")),
            None => problem.help(format!("keys are {}", Key::NAMES.join(", "))),
        },
        _ => problem.help("write `COUNT/PERIOD per KEY`, e.g. `500/min per user`, `10/5min per ip and 100/h per account`, `50/10s burst 10 per user+route`"),
    }
}

/// A problem for a class name no one declared.
pub fn unknown_class(name: &str, span: Range<usize>, classes: &Classes) -> Problem {
    let problem = Problem::error(format!("unknown rate-limit class `{name}`")).at(span);
    match nearest(name, classes.keys().map(AsRef::as_ref)) {
        Some(near) => problem.help(format!("did you mean `{near}`?")),
        None => problem,
    }
}

/// The classes a rule or route names (`rate_limit = "api"` or a list; `[]` for
/// none), or the defaults when it names none.
pub fn rule_classes(
    named: Option<&Spanned<raw::StringList>>,
    classes: &Classes,
    default: &[Arc<LimitClass>],
    problems: &mut Vec<Problem>,
) -> Option<Vec<Arc<LimitClass>>> {
    let Some(named) = named else {
        return Some(default.to_vec());
    };
    let mut resolved = Vec::new();
    let mut ok = true;
    for name in &named.get_ref().0 {
        match classes.get(name.as_str()) {
            Some(class) if class.uses(Key::Login) => {
                problems.push(
                    Problem::error(format!(
                        "class `{name}` counts per `login`, which only the login endpoint knows"
                    ))
                    .at(named.span())
                    .help("count per `ip`, `user`, `account` or `route` here; the login endpoint has `[rate_limits] login`"),
                );
                ok = false;
            }
            Some(class) => resolved.push(class.clone()),
            None => {
                problems.push(unknown_class(name, named.span(), classes).help(
                    "declare it in [rate_limits.classes] of the configuration or [rate_limits] of a policy file",
                ));
                ok = false;
            }
        }
    }
    ok.then_some(resolved)
}

/// The default classes, resolved.
pub fn default_classes(settings: &RateLimitSettings) -> Vec<Arc<LimitClass>> {
    settings
        .default
        .iter()
        .filter_map(|name| settings.classes.get(name).cloned())
        .collect()
}
