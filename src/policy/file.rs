//! Policy files: `policies/*.toml`, merged into one [`RuleSet`].
//!
//! ```toml
//! [[route]]
//! id = "asset-read"                        # stable; in audit records and errors
//! match = "GET|HEAD /api/v3_0/assets/{id}" # methods (or `*`) and a path template
//! host = "*"                               # optional: `*`, `name`, `*.name`
//! backend = "flexmeasures"
//! auth = "token"                           # public | token | session | token-or-session
//! mfa = true                               # sessions must have passed the second factor (default)
//! permission = "read"                      # optional; else from the method
//! allow = ["account:{owner}", ["role:consultant", "account:{consultancy}"]]
//! mode = "enforce"                         # or "shadow": log would-be refusals only
//! rate_limit = "api"                       # classes (a name or a list); default: [rate_limits] default
//!
//! [rate_limits]                            # classes, beside those of the configuration
//! api = "500/min per user"
//! ```
//!
//! Every file is checked completely and every problem reported with file:line:col
//! (each file has a report of its own, attached to the configuration's). Rules that
//! would decide the same requests are reported in both places.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::principal::{Allow, Principal};
use super::rules::{METHODS, Mode, Permission, Resource, ResourceRef, Rule, RuleSet};
use super::template::Template;
use crate::config::diagnostic::{Problem, Report, Sources, nearest};
use crate::rate_limit::{Classes, LimitClass};
use crate::route::{Access, HostPattern};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    query: Spanned<String>,
    ttl: Option<Spanned<String>>,
    missing: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    #[serde(rename = "match")]
    matches: Spanned<String>,
    host: Option<Spanned<String>>,
    backend: Spanned<String>,
    auth: Option<Spanned<String>>,
    mfa: Option<Spanned<bool>>,
    permission: Option<Spanned<String>>,
    allow: Option<Spanned<toml::Value>>,
    mode: Option<Spanned<String>>,
    resource: Option<Spanned<String>>,
    rate_limit: Option<Spanned<crate::config::StringList>>,
}

const RULE_KEYS: &[&str] = &[
    "rate_limit",
    "resource",
    "id",
    "match",
    "host",
    "backend",
    "auth",
    "mfa",
    "permission",
    "allow",
    "mode",
];

/// Where a rule was written, for problems that involve two rules.
#[derive(Debug, Clone)]
struct Place {
    file: usize,
    span: Range<usize>,
}

/// The policy directory's rules, when every file is valid, and a report per file.
#[derive(Debug)]
pub struct Loaded {
    pub rules: Option<RuleSet>,
    pub reports: Vec<Report>,
}

/// What policy files are checked against, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub backends: Vec<Arc<str>>,
    /// Whether a directory database exists for `[resources]`.
    pub database: bool,
    /// Classes of the configuration's `[rate_limits.classes]`.
    pub classes: Classes,
    /// Classes for rules that name none.
    pub default: Vec<Arc<LimitClass>>,
}

impl Inputs {
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            backends: backend_names(&config.backends),
            database: config.directory.is_some(),
            classes: config.rate_limits.classes.clone(),
            default: crate::config::default_classes(&config.rate_limits),
        }
    }
}

/// Loads every `*.toml` directly in `dir` (sorted by name) against the
/// configuration's backends, database and limit classes.
pub fn load(dir: &Path, inputs: &Inputs) -> Loaded {
    let backends = inputs.backends.as_slice();
    let database = inputs.database;
    let mut reports = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            let sources = Sources::new(dir, String::new());
            reports.push(Report::new(
                sources,
                vec![
                    Problem::error(format!("cannot read the policy directory: {error}"))
                        .help("`[policies] dir` names a directory of *.toml policy files"),
                ],
            ));
            return Loaded {
                rules: None,
                reports,
            };
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut rules: Vec<Rule> = Vec::new();
    let mut places: Vec<Place> = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let texts: Vec<String> = paths
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect();
    // First every file's [resources] and [rate_limits], so rules in any file can
    // name them.
    let mut resources: HashMap<String, Arc<Resource>> = HashMap::new();
    let mut classes = inputs.classes.clone();
    let mut early: Vec<Vec<Problem>> = Vec::new();
    for text in &texts {
        let mut check = FileCheck {
            problems: Vec::new(),
            backends,
            resources: &HashMap::new(),
            classes: &Classes::new(),
            default: &[],
        };
        check.resources(text, database, &mut resources);
        check.classes(text, &inputs.classes, &mut classes);
        early.push(check.problems);
    }
    for (file, path) in paths.iter().enumerate() {
        let text = texts.get(file).cloned().unwrap_or_default();
        let mut check = FileCheck {
            problems: early.get_mut(file).map(std::mem::take).unwrap_or_default(),
            backends,
            resources: &resources,
            classes: &classes,
            default: &inputs.default,
        };
        for (rule, span) in check.file(&text) {
            if let Some(first) = ids.get(rule.id.as_ref()) {
                let other = places
                    .get(*first)
                    .map(|p| position(&paths, &reports, p, &text, file, path));
                check.problems.push(
                    Problem::error(format!("rule id `{}` is used twice", rule.id))
                        .at(span.clone())
                        .help(format!(
                            "ids are unique across policy files; the other is at {}",
                            other.unwrap_or_default()
                        )),
                );
                continue;
            }
            ids.insert(rule.id.to_string(), rules.len());
            rules.push(rule);
            places.push(Place { file, span });
        }
        if rules.is_empty() && file + 1 == paths.len() && check.problems.is_empty() {
            check.problems.push(Problem::warning(
                "no policy rules: every request will be refused with 404",
            ));
        }
        let mut problems = check.problems;
        problems.sort_by_key(|p| p.span.as_ref().map(|s| s.start));
        reports.push(Report::new(Sources::new(path, text), problems));
    }
    if paths.is_empty() {
        reports.push(Report::new(
            Sources::new(dir, String::new()),
            vec![
                Problem::error("the policy directory has no *.toml files")
                    .help("add a policy file (see policies/example.toml) or remove `[policies]`"),
            ],
        ));
    }
    let failed = reports.iter().any(Report::has_errors);
    match RuleSet::build(rules) {
        Ok(set) if !failed => Loaded {
            rules: Some(set),
            reports,
        },
        Ok(_) => Loaded {
            rules: None,
            reports,
        },
        Err(conflicts) => {
            for conflict in conflicts {
                let (Some(&at), Some(&other)) = (
                    ids.get(conflict.rule.as_ref()),
                    ids.get(conflict.existing.as_ref()),
                ) else {
                    continue;
                };
                let (Some(place), Some(other_place)) = (places.get(at), places.get(other)) else {
                    continue;
                };
                let other_position = reports
                    .get(other_place.file)
                    .map(|r| r.sources.position(&other_place.span))
                    .unwrap_or_default();
                if let Some(report) = reports.get_mut(place.file) {
                    report.problems.push(
                        Problem::error(format!(
                            "rules `{}` and `{}` both decide {} requests to the same path",
                            conflict.rule, conflict.existing, conflict.method
                        ))
                        .at(place.span.clone())
                        .help(format!(
                            "make one more specific (a literal segment where the other has a parameter), or split the methods; `{}` is at {other_position}",
                            conflict.existing
                        )),
                    );
                }
            }
            Loaded {
                rules: None,
                reports,
            }
        }
    }
}

/// `file:line:col` of a rule written in an earlier file, or in the current one.
fn position(
    paths: &[PathBuf],
    reports: &[Report],
    place: &Place,
    current_text: &str,
    current: usize,
    current_path: &Path,
) -> String {
    if place.file == current {
        return Sources::new(current_path, current_text.to_owned()).position(&place.span);
    }
    reports
        .get(place.file)
        .map(|r| r.sources.position(&place.span))
        .or_else(|| paths.get(place.file).map(|p| p.display().to_string()))
        .unwrap_or_default()
}

struct FileCheck<'b> {
    problems: Vec<Problem>,
    backends: &'b [Arc<str>],
    resources: &'b HashMap<String, Arc<Resource>>,
    classes: &'b Classes,
    default: &'b [Arc<LimitClass>],
}

impl FileCheck<'_> {
    fn error(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    fn file(&mut self, text: &str) -> Vec<(Rule, Range<usize>)> {
        let (root, syntax_errors) = DeTable::parse_recoverable(text);
        for error in syntax_errors {
            self.error(
                Problem::error(format!("invalid TOML: {}", error.message().trim()))
                    .at_opt(error.span()),
            );
        }
        let mut root = root.into_inner();
        for (key, _) in root.iter() {
            if !matches!(
                key.get_ref().as_ref(),
                "route" | "resources" | "rate_limits"
            ) {
                self.error(
                    Problem::error(format!("unknown key `{}`", key.get_ref()))
                        .at(key.span())
                        .help("a policy file holds [[route]], [resources.NAME] and [rate_limits] tables"),
                );
            }
        }
        let Some(value) = root.remove("route") else {
            return Vec::new();
        };
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            self.error(Problem::error("`route` must be an array of tables").at(span));
            return Vec::new();
        };
        let mut rules = Vec::new();
        for item in items.iter() {
            let item_span = item.span();
            match RawRule::deserialize(ValueDeserializer::from(item.clone())) {
                Ok(raw) => {
                    let span = raw.id.span();
                    if let Some(rule) = self.rule(raw) {
                        rules.push((rule, span));
                    }
                }
                Err(error) => {
                    let message = error.message().trim().to_owned();
                    let mut problem = Problem::error(format!("in [[route]]: {message}"))
                        .at(error.span().unwrap_or(item_span));
                    let unknown = message
                        .strip_prefix("unknown field `")
                        .and_then(|m| m.split('`').next());
                    problem = match unknown.and_then(|u| nearest(u, RULE_KEYS.iter().copied())) {
                        Some(near) => problem.help(format!("did you mean `{near}`?")),
                        None => problem.help(format!("a rule has {}", RULE_KEYS.join(", "))),
                    };
                    self.error(problem);
                }
            }
        }
        rules
    }

    /// `[resources.NAME]` tables of one file.
    fn resources(
        &mut self,
        text: &str,
        database: bool,
        resources: &mut HashMap<String, Arc<Resource>>,
    ) {
        let (root, _) = DeTable::parse_recoverable(text);
        let mut root = root.into_inner();
        let Some(value) = root.remove("resources") else {
            return;
        };
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error(Problem::error("`resources` is a table of [resources.NAME]").at(span));
            return;
        };
        if !database {
            self.error(
                Problem::error("resources are looked up in the directory's database, and there is no `[directory]`")
                    .at(span.clone())
                    .help("add `[directory]` to the configuration"),
            );
        }
        for (name, value) in table.iter() {
            let name_span = name.span();
            let name = name.get_ref().to_string();
            let raw = match RawResource::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(raw) => raw,
                Err(error) => {
                    self.error(
                        Problem::error(format!(
                            "in [resources.{name}]: {}",
                            error.message().trim()
                        ))
                        .at(error.span().unwrap_or(name_span))
                        .help("a resource has `query`, and optionally `ttl`, `missing` and `key`"),
                    );
                    continue;
                }
            };
            if !raw.query.get_ref().contains("$1") {
                self.error(
                    Problem::error("the query must use `$1` for the path parameter")
                        .at(raw.query.span())
                        .help("e.g. `SELECT account_id, NULL FROM assets WHERE id = $1`: owner account, consultancy account"),
                );
                continue;
            }
            let ttl = match &raw.ttl {
                None => std::time::Duration::from_secs(60),
                Some(text) => match humantime::parse_duration(text.get_ref()) {
                    Ok(ttl) if ttl <= std::time::Duration::from_secs(24 * 3600) => ttl,
                    _ => {
                        self.error(
                            Problem::error("`ttl` must be a duration up to a day, like \"60s\"")
                                .at(text.span()),
                        );
                        continue;
                    }
                },
            };
            let missing_is_not_found = match raw.missing.as_ref().map(|m| m.get_ref().as_str()) {
                None | Some("not-found") => true,
                Some("forbidden") => false,
                Some(other) => {
                    if let Some(text) = &raw.missing {
                        self.error(
                            Problem::error(format!("unknown `missing` answer `{other}`"))
                                .at(text.span())
                                .help("use `not-found` (404, the default) or `forbidden` (403)"),
                        );
                    }
                    continue;
                }
            };
            let integer_key = match raw.key.as_ref().map(|k| k.get_ref().as_str()) {
                None | Some("text") => false,
                Some("integer") => true,
                Some(other) => {
                    if let Some(text) = &raw.key {
                        self.error(
                            Problem::error(format!("unknown `key` type `{other}`"))
                                .at(text.span())
                                .help("`integer` (ids: anything else is a missing resource, not looked up) or `text`"),
                        );
                    }
                    continue;
                }
            };
            if resources.contains_key(&name) {
                self.error(
                    Problem::error(format!("resource `{name}` is declared twice")).at(name_span),
                );
                continue;
            }
            resources.insert(
                name.clone(),
                Arc::new(Resource::new(
                    &name,
                    raw.query.get_ref(),
                    ttl,
                    missing_is_not_found,
                    integer_key,
                )),
            );
        }
    }

    /// `[rate_limits]` of one file: `NAME = "SPEC"`. A name may be declared once,
    /// here or in the configuration.
    fn classes(&mut self, text: &str, configured: &Classes, classes: &mut Classes) {
        let (root, _) = DeTable::parse_recoverable(text);
        let mut root = root.into_inner();
        let Some(value) = root.remove("rate_limits") else {
            return;
        };
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error(Problem::error("`rate_limits` is a table of `NAME = \"SPEC\"`").at(span));
            return;
        };
        for (name, value) in table.iter() {
            let name_span = name.span();
            let name = name.get_ref().to_string();
            let value_span = value.span();
            let DeValue::String(spec) = value.get_ref() else {
                self.error(
                    Problem::error(format!(
                        "class `{name}` is a string like \"500/min per user\""
                    ))
                    .at(value_span),
                );
                continue;
            };
            if !crate::rate_limit::is_class_name(&name) {
                self.error(
                    Problem::error(format!("`{name}` is not a valid class name"))
                        .at(name_span)
                        .help("use letters, digits, `-`, `_` or `.`"),
                );
                continue;
            }
            if classes.contains_key(name.as_str()) {
                let where_ = if configured.contains_key(name.as_str()) {
                    "in the configuration's [rate_limits.classes]"
                } else {
                    "in another policy file"
                };
                self.error(
                    Problem::error(format!("rate-limit class `{name}` is declared twice"))
                        .at(name_span)
                        .help(format!("it is already declared {where_}; rename one")),
                );
                continue;
            }
            match LimitClass::parse(&name, spec) {
                Ok(class) => {
                    classes.insert(class.name.clone(), Arc::new(class));
                }
                Err(error) => self.error(crate::config::spec_problem(&error, value_span)),
            }
        }
    }

    /// `resource = "NAME:{parameter}"`.
    fn resource(&mut self, text: &Spanned<String>, template: &Template) -> Option<ResourceRef> {
        let parsed = text
            .get_ref()
            .split_once(':')
            .and_then(|(name, parameter)| {
                let parameter = parameter.strip_prefix('{')?.strip_suffix('}')?;
                Some((name, parameter))
            });
        let Some((name, parameter)) = parsed else {
            self.error(
                Problem::error("`resource` is `NAME:{parameter}`")
                    .at(text.span())
                    .help("e.g. `resource = \"asset:{id}\"` for `match = \"GET /assets/{id}\"`"),
            );
            return None;
        };
        let Some(resource) = self.resources.get(name) else {
            let mut problem = Problem::error(format!("unknown resource `{name}`")).at(text.span());
            problem = match nearest(name, self.resources.keys().map(String::as_str)) {
                Some(near) => problem.help(format!("did you mean `{near}`?")),
                None => problem.help("declare it as [resources.NAME] with a `query`"),
            };
            self.error(problem);
            return None;
        };
        if !template.parameters().any(|p| p == parameter) {
            self.error(
                Problem::error(format!(
                    "`{{{parameter}}}` is not a parameter of this rule's path"
                ))
                .at(text.span()),
            );
            return None;
        }
        Some(ResourceRef {
            resource: resource.clone(),
            parameter: parameter.to_owned(),
        })
    }

    fn rule(&mut self, raw: RawRule) -> Option<Rule> {
        let id = raw.id.get_ref().clone();
        let mut ok = true;
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            self.error(
                Problem::error(format!("`{id}` is not a valid rule id"))
                    .at(raw.id.span())
                    .help("use letters, digits, `-`, `_`, `.` or `:`"),
            );
            ok = false;
        }
        let (methods, template) = match self.matches(&raw.matches) {
            Some(parsed) => parsed,
            None => (
                Vec::new(),
                Template {
                    segments: Vec::new(),
                },
            ),
        };
        ok &= !methods.is_empty();
        let host = match &raw.host {
            None => HostPattern::Any,
            Some(text) => HostPattern::parse(text.get_ref()).unwrap_or_else(|| {
                self.error(
                    Problem::error(format!("`{}` is not a host pattern", text.get_ref()))
                        .at(text.span())
                        .help("write `*`, `example.com` or `*.example.com`"),
                );
                ok = false;
                HostPattern::Any
            }),
        };
        let backend = raw.backend.get_ref().as_str();
        if !self.backends.iter().any(|b| b.as_ref() == backend) {
            let mut problem = Problem::error(format!("unknown backend `{backend}`"))
                .at(raw.backend.span())
                .label("not in [backends]");
            problem = match nearest(backend, self.backends.iter().map(AsRef::as_ref)) {
                Some(near) => problem.help(format!("did you mean `{near}`?")),
                None => problem.help("declare it as [backends.NAME] in the configuration"),
            };
            self.error(problem);
            ok = false;
        }
        let access = match &raw.auth {
            None => Access::Token,
            Some(text) => Access::parse(text.get_ref()).unwrap_or_else(|| {
                let mut problem = Problem::error(format!("unknown auth mode `{}`", text.get_ref()))
                    .at(text.span());
                if let Some(near) = nearest(text.get_ref(), Access::NAMES.iter().copied()) {
                    problem = problem.help(format!("did you mean `{near}`?"));
                }
                self.error(problem);
                ok = false;
                Access::Token
            }),
        };
        if let Some(mfa) = &raw.mfa
            && !matches!(access, Access::Session | Access::TokenOrSession)
        {
            self.error(
                Problem::warning(format!(
                    "`mfa` only applies to session rules; this one is `{}`",
                    access.name()
                ))
                .at(mfa.span())
                .help("remove `mfa`, or set `auth = \"session\"` or `\"token-or-session\"`"),
            );
        }
        let mfa = raw.mfa.as_ref().is_none_or(|mfa| *mfa.get_ref());
        let permission = raw.permission.as_ref().and_then(|text| {
            let parsed = Permission::parse(text.get_ref());
            if parsed.is_none() {
                let mut problem =
                    Problem::error(format!("unknown permission `{}`", text.get_ref()))
                        .at(text.span());
                problem = match nearest(text.get_ref(), Permission::NAMES.iter().copied()) {
                    Some(near) => problem.help(format!("did you mean `{near}`?")),
                    None => problem.help(format!("use one of: {}", Permission::NAMES.join(", "))),
                };
                self.error(problem);
                ok = false;
            }
            parsed
        });
        let mode = match raw.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("enforce") => Mode::Enforce,
            Some("shadow") => Mode::Shadow,
            Some(other) => {
                if let Some(text) = &raw.mode {
                    self.error(
                        Problem::error(format!("unknown mode `{other}`"))
                            .at(text.span())
                            .help("use `enforce` (default) or `shadow`"),
                    );
                }
                ok = false;
                Mode::Enforce
            }
        };
        let resource = match &raw.resource {
            None => None,
            Some(text) => {
                let resource = self.resource(text, &template);
                ok &= resource.is_some();
                resource
            }
        };
        let allow = match (&raw.allow, access) {
            (Some(allow), Access::Public) => {
                self.error(
                    Problem::error("a public rule admits everyone; `allow` would be ignored")
                        .at(allow.span())
                        .help("remove `allow`, or set `auth` to `token`"),
                );
                ok = false;
                Allow::default()
            }
            (None, Access::Public) => Allow::default(),
            (None, _) => {
                self.error(
                    Problem::error(format!("rule `{id}` has no `allow` list"))
                        .at(raw.id.span())
                        .help("say who may: `allow = [\"every-logged-in-user\"]`, or `allow = []` for admins only"),
                );
                ok = false;
                Allow::default()
            }
            (Some(allow), _) => match self.allow(allow, &template, raw.resource.is_some()) {
                Some(allow) => allow,
                None => {
                    ok = false;
                    Allow::default()
                }
            },
        };
        let rate_limits = crate::config::rule_classes(
            raw.rate_limit.as_ref(),
            self.classes,
            self.default,
            &mut self.problems,
        );
        ok &= rate_limits.is_some();
        ok.then(|| Rule {
            rate_limits: rate_limits.unwrap_or_default(),
            id: id.into(),
            host,
            methods,
            template,
            backend: backend.into(),
            access,
            mfa,
            permission,
            allow,
            mode,
            resource,
        })
    }

    /// `GET|HEAD /path/{x}` or `* /path`.
    fn matches(&mut self, text: &Spanned<String>) -> Option<(Vec<&'static str>, Template)> {
        let span = text.span();
        let Some((methods, path)) = text.get_ref().trim().split_once(' ') else {
            self.error(
                Problem::error("`match` is `METHODS PATH`")
                    .at(span)
                    .help("e.g. `GET /api/v3_0/assets/{id}`, `GET|HEAD /x`, `* /static/{path*}`"),
            );
            return None;
        };
        let mut parsed = Vec::new();
        if methods == "*" {
            parsed.extend_from_slice(METHODS);
        } else {
            for method in methods.split('|') {
                match METHODS.iter().find(|m| **m == method) {
                    Some(m) => parsed.push(*m),
                    None => {
                        let mut problem =
                            Problem::error(format!("unknown method `{method}`")).at(span.clone());
                        problem = match nearest(method, METHODS.iter().copied()) {
                            Some(near) => problem.help(format!("did you mean `{near}`?")),
                            None => problem.help(format!("use {} or `*`", METHODS.join(", "))),
                        };
                        self.error(problem);
                        return None;
                    }
                }
            }
        }
        match Template::parse(path.trim()) {
            Ok(template) => Some((parsed, template)),
            Err(error) => {
                self.error(Problem::error(format!("in `match`: {error}")).at(span));
                None
            }
        }
    }

    /// Role names are free-form, but one or two letters away from a built-in user
    /// role or a common account role is probably a typo: a warning.
    fn role_typo(&mut self, principal: &Principal, span: Range<usize>) {
        let (name, known) = match principal {
            Principal::Role(name) => (name, crate::directory::BUILTIN_USER_ROLES),
            Principal::AccountRole(name) => (name, crate::directory::KNOWN_ACCOUNT_ROLES),
            _ => return,
        };
        if known.contains(&name.as_str()) {
            return;
        }
        if let Some(near) = crate::directory::nearest_role(name, known) {
            self.error(
                Problem::warning(format!("`{principal}`: no such built-in or common role"))
                    .at(span)
                    .help(format!(
                        "did you mean `{near}`? (custom roles are fine if intended)"
                    )),
            );
        }
    }

    /// A list of principals and lists of principals.
    fn allow(
        &mut self,
        value: &Spanned<toml::Value>,
        template: &Template,
        has_resource: bool,
    ) -> Option<Allow> {
        let span = value.span();
        let toml::Value::Array(items) = value.get_ref() else {
            self.error(Problem::error("`allow` is a list").at(span));
            return None;
        };
        let mut any_of = Vec::new();
        let mut ok = true;
        for item in items {
            let group: Vec<&toml::Value> = match item {
                toml::Value::Array(inner) => inner.iter().collect(),
                other => vec![other],
            };
            let mut principals = Vec::new();
            for entry in group {
                let Some(text) = entry.as_str() else {
                    self.error(
                        Problem::error("`allow` holds principal strings and lists of them")
                            .at(span.clone()),
                    );
                    ok = false;
                    continue;
                };
                match Principal::parse(text) {
                    Ok(principal) => {
                        self.role_typo(&principal, span.clone());
                        // A relation names a path parameter (or, later, a resolved
                        // attribute); an unknown name would never match.
                        let resolved = has_resource
                            && matches!(principal.relation(), Some("owner" | "consultancy"));
                        if matches!(principal, Principal::Unowned(_)) && !resolved {
                            self.error(
                                Problem::error(format!(
                                    "`{text}` is about a resource's attribute: use `public:{{owner}}` with `resource = \"NAME:{{parameter}}\"`"
                                ))
                                .at(span.clone()),
                            );
                            ok = false;
                        }
                        if let Some(name) = principal.relation()
                            && !resolved
                            && !template.parameters().any(|p| p == name)
                        {
                            self.error(
                                Problem::error(format!(
                                    "`{text}` names `{{{name}}}`, which is not a parameter of this rule's path"
                                ))
                                .at(span.clone())
                                .help("use a `{name}` from `match`, or `{owner}`/`{consultancy}` with `resource = \"NAME:{parameter}\"`"),
                            );
                            ok = false;
                        }
                        principals.push(principal);
                    }
                    Err(error) => {
                        let kind = text.split(':').next().unwrap_or_default();
                        let kinds = [
                            "user",
                            "account",
                            "role",
                            "account-role",
                            "every-logged-in-user",
                            "public",
                        ];
                        let mut problem =
                            Problem::error(format!("in `allow`: {error}")).at(span.clone());
                        if let Some(near) =
                            nearest(kind, kinds.iter().copied()).filter(|n| *n != kind)
                        {
                            problem = problem.help(format!("did you mean `{near}`?"));
                        }
                        self.error(problem);
                        ok = false;
                    }
                }
            }
            any_of.push(principals);
        }
        ok.then_some(Allow { any_of })
    }
}

/// Backend names of a configuration, for [`load`].
pub fn backend_names<V>(backends: &BTreeMap<Arc<str>, V>) -> Vec<Arc<str>> {
    backends.keys().cloned().collect()
}
