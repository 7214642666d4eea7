//! Configuration: one TOML file plus environment overrides, checked completely.
//!
//! [`load`] reads `portcullis.toml`, applies `PORTCULLIS__SECTION__KEY` environment
//! overrides, deserializes every section on its own (so one bad section does not hide
//! problems in the others) and converts the raw values into a typed [`Config`]. Every
//! problem found on the way is collected into one [`Report`] with `file:line:col` and a
//! hint. Nothing here touches the network or pingora; certificate contents are checked
//! by `tls.rs`, which reports into the same [`Report`].

pub mod diagnostic;
mod flexmeasures;
mod identity;
mod rate_limits;
mod raw;
mod web_login;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

pub use diagnostic::{Problem, Report, Severity, Sources};
use raw::DurationText;

use crate::forwarding::TrustedProxies;
use crate::route::{Access, HostPattern, Route, RouteTable, normalize_prefix};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "PORTCULLIS__";
/// The token max age in seconds, as the seeds name it; overrides `[tokens] max_age`.
pub const TOKEN_MAX_AGE_VARIABLE: &str = "SECURITY_TOKEN_MAX_AGE";

/// A validated configuration. Every value in it has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub listen: Listen,
    pub tls: TlsFiles,
    pub hsts: Hsts,
    pub server: ServerSettings,
    pub log: LogSettings,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; empty: nowhere.
    pub admin: Vec<SocketAddr>,
    pub audit: AuditSettings,
    /// Where users live; without it no credential can be verified and only `public`
    /// routes admit anyone.
    pub directory: Option<DirectorySettings>,
    /// With `[directory] kind = "flexmeasures"`: FlexMeasures' keys and login.
    pub flexmeasures: Option<FlexMeasuresSettings>,
    pub tokens: TokenSettings,
    /// Shared state for several instances; `None`: this instance alone.
    pub redis: Option<RedisSettings>,
    pub identity_headers: IdentityHeaderSettings,
    pub backends: BTreeMap<Arc<str>, Backend>,
    /// Routes from `[[route]]` (empty when `[policies]` is set).
    pub routes: RouteTable,
    /// Rules from the policy files, when `[policies]` is set.
    pub rules: Option<Arc<crate::policy::rules::RuleSet>>,
    /// Limit classes, where budgets are kept, and the login endpoint's limits.
    pub rate_limits: crate::rate_limit::RateLimitSettings,
    /// The login pages for browsers and their sessions; `None`: no web login.
    pub web_login: Option<WebLoginSettings>,
    /// Where the policy files are, when `[policies]` is set.
    pub policies_dir: Option<PathBuf>,
    /// How often the policy files are looked at for changes; zero: only on SIGHUP.
    pub policies_reload_interval: Duration,
    /// Where each checked value came from, so later checks (certificates) can point at it.
    pub spans: SpanIndex,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub https: Vec<SocketAddr>,
    /// Plain-HTTP listeners that only redirect to https; may be empty.
    pub http: Vec<SocketAddr>,
    /// The port written into redirect `Location`s.
    pub redirect_port: u16,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Warn when the certificate expires sooner than this.
    pub expiry_warning: Duration,
    /// How often to look for a renewed certificate; zero disables reloading.
    pub reload_interval: Duration,
}

/// `Strict-Transport-Security` (RFC 6797).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    pub fn header_value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    /// After SIGTERM: how long in-flight requests may take before runtimes stop.
    pub grace_period: Duration,
    /// After the grace period: how long runtimes may take to exit.
    pub shutdown_timeout: Duration,
    pub trusted_proxies: TrustedProxies,
    /// Idle upstream connections kept for reuse, across all backends.
    pub keepalive_pool_size: usize,
    /// How long a client connection may stay open between requests (HTTP/1.1
    /// keep-alive and HTTP/2); whole seconds.
    pub client_idle_timeout: Duration,
}

pub use flexmeasures::{FlexMeasuresLogin, FlexMeasuresSettings, TokenInRequest};
pub use identity::{
    DirectoryKind, DirectorySettings, IdentityHeaderSettings, PasswordPriority, RedisSettings,
    TokenSettings,
};
pub use rate_limits::{default_classes, rule_classes, spec_problem};
pub use raw::StringList;
pub use web_login::{MailSettings, MailTransport, SmtpSettings, SmtpTls, WebLoginSettings};

/// Where decision records go and how many may wait to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub target: crate::audit::AuditTarget,
    pub capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `portcullis=debug,pingora=warn`.
    pub filter: String,
}

/// Where a named backend lives and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: Arc<str>,
    /// As written, for messages.
    pub address_text: String,
    /// Resolved once at load; the proxy never resolves names on the request path.
    pub address: SocketAddr,
    pub tls: Option<BackendTls>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    pub sni: String,
    pub verify_certificate: bool,
    pub ca: Option<PathBuf>,
}

/// Spans of values that later checks report on.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    pub certificate: Option<Range<usize>>,
    pub private_key: Option<Range<usize>>,
    pub backend_ca: HashMap<Arc<str>, Range<usize>>,
}

/// The outcome of loading: a config when there were no errors, and the full report.
#[derive(Debug)]
pub struct Loaded {
    pub config: Option<Config>,
    pub report: Report,
}

/// Every section and the keys it accepts, as the parser defines them.
pub fn schema() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("listen", raw::keys_of::<raw::Listen>()),
        ("tls", raw::keys_of::<raw::Tls>()),
        ("hsts", raw::keys_of::<raw::Hsts>()),
        ("server", raw::keys_of::<raw::Server>()),
        ("log", raw::keys_of::<raw::Log>()),
        ("admin", raw::keys_of::<raw::Admin>()),
        ("audit", raw::keys_of::<raw::Audit>()),
        ("directory", raw::keys_of::<raw::Directory>()),
        ("flexmeasures", raw::keys_of::<raw::FlexMeasures>()),
        ("tokens", raw::keys_of::<raw::Tokens>()),
        ("redis", raw::keys_of::<raw::Redis>()),
        ("identity_headers", raw::keys_of::<raw::IdentityHeaders>()),
        ("policies", raw::keys_of::<raw::Policies>()),
        ("rate_limits", raw::keys_of::<raw::RateLimits>()),
        ("web_login", raw::keys_of::<raw::WebLogin>()),
        ("mail", raw::keys_of::<raw::Mail>()),
        ("backends.NAME", raw::keys_of::<raw::Backend>()),
        ("route", raw::keys_of::<raw::Route>()),
    ]
}

/// Loads and checks a configuration file with overrides from the process environment.
pub fn load(path: &Path) -> Loaded {
    load_with_env(path, std::env::vars())
}

/// Loads and checks a configuration file with the given environment.
pub fn load_with_env(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Loaded {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, text, env),
        Err(error) => Loaded {
            config: None,
            report: Report::new(
                Sources::new(path, String::new()),
                vec![
                    Problem::error(format!("cannot read configuration: {error}")).help(
                        "pass the path of portcullis.toml with --config; \
                         deploy/portcullis.example.toml documents every key",
                    ),
                ],
            ),
        },
    }
}

/// Checks configuration text as if read from `path` (relative paths in it resolve
/// against `path`'s directory).
pub fn parse(path: &Path, text: String, env: impl IntoIterator<Item = (String, String)>) -> Loaded {
    let mut sources = Sources::new(path, text);
    let mut overrides: Vec<(Vec<String>, String, Range<usize>)> = env
        .into_iter()
        .filter_map(|(name, value)| {
            // The seeds' variable for the token max age (DESIGN §3), in seconds.
            if name == TOKEN_MAX_AGE_VARIABLE {
                return Some((vec!["tokens".into(), "max_age".into()], name, value));
            }
            let keys = name.strip_prefix(ENV_PREFIX)?;
            let keys: Vec<String> = keys.split("__").map(str::to_ascii_lowercase).collect();
            Some((keys, name, value))
        })
        .map(|(keys, name, value)| {
            let span = sources.add_env(&name, &value);
            (keys, value, span)
        })
        .collect();
    // Environment order is unspecified; apply in a stable order.
    overrides.sort_by(|a, b| a.0.cmp(&b.0));

    let mut problems = Vec::new();
    let (root, syntax_errors) = DeTable::parse_recoverable(&sources.file);
    for error in syntax_errors {
        problems.push(
            Problem::error(format!("invalid TOML: {}", error.message().trim()))
                .at_opt(error.span())
                .help("fix the syntax; TOML reference: https://toml.io/en/v1.0.0"),
        );
    }
    let mut root = root.into_inner();
    for (keys, value, span) in &overrides {
        if let Err(problem) = apply_override(&mut root, keys, env_value(value, span.clone())) {
            problems.push(problem);
        }
    }

    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut check = Check {
        problems,
        broken_backends: Default::default(),
        has_directory: false,
        has_web_login: false,
        others: Vec::new(),
        classes: Default::default(),
        default_classes: Vec::new(),
        base,
        sources: &sources,
    };
    let config = check.config(path, root);
    let others = std::mem::take(&mut check.others);
    let mut problems = check.problems;
    // In file order, environment last; whole-file problems first.
    problems.sort_by_key(|problem| problem.span.as_ref().map(|span| span.start));
    let mut report = Report::new(sources, problems);
    report.others = others;
    Loaded {
        config: if report.has_errors() { None } else { config },
        report,
    }
}

/// Reads an environment value as TOML when it is one (`8`, `true`, `["a"]`, `"quoted"`)
/// and as a plain string otherwise; every part of it points at the variable.
fn env_value(value: &str, span: Range<usize>) -> Spanned<DeValue<'_>> {
    let parsed = DeValue::parse(value)
        .ok()
        .map(Spanned::into_inner)
        .filter(|parsed| !matches!(parsed, DeValue::Table(_) | DeValue::Datetime(_)));
    let value = match parsed {
        Some(parsed) => respan(parsed, &span),
        None => DeValue::String(value.into()),
    };
    Spanned::new(span, value)
}

fn respan<'a>(value: DeValue<'a>, span: &Range<usize>) -> DeValue<'a> {
    match value {
        DeValue::Array(items) => {
            let mut array = DeArray::new();
            for item in items.iter() {
                array.push(Spanned::new(
                    span.clone(),
                    respan(item.get_ref().clone(), span),
                ));
            }
            DeValue::Array(array)
        }
        other => other,
    }
}

fn apply_override<'a>(
    root: &mut DeTable<'a>,
    keys: &[String],
    value: Spanned<DeValue<'a>>,
) -> Result<(), Problem> {
    let span = value.span();
    let Some((last, parents)) = keys.split_last() else {
        return Ok(());
    };
    if keys.iter().any(String::is_empty) || parents.is_empty() {
        return Err(
            Problem::error("environment override must name a section and a key")
                .at(span)
                .help("use PORTCULLIS__SECTION__KEY, e.g. PORTCULLIS__LISTEN__HTTPS=0.0.0.0:443"),
        );
    }
    let mut table = root;
    for key in parents {
        let entry = table
            .entry(Spanned::new(span.clone(), key.clone().into()))
            .or_insert_with(|| Spanned::new(span.clone(), DeValue::Table(DeTable::new())));
        table = match entry.get_mut() {
            DeValue::Table(inner) => inner,
            _ => {
                return Err(Problem::error(format!(
                    "environment override goes into `{key}`, which is not a table"
                ))
                .at(span)
                .help(
                    "routes and other arrays of tables cannot be overridden from the environment",
                ));
            }
        };
    }
    table.insert(Spanned::new(span.clone(), last.clone().into()), value);
    Ok(())
}

/// The typed conversion; collects problems instead of stopping.
struct Check<'s> {
    problems: Vec<Problem>,
    /// Backends whose section was already reported as broken.
    broken_backends: std::collections::HashSet<String>,
    /// Directory relative paths resolve against: the configuration file's.
    base: PathBuf,
    /// Whether a `[directory]` section is present (so tokens can be verified).
    has_directory: bool,
    /// Whether `[web_login]` is set (session routes can be reached).
    has_web_login: bool,
    /// Reports of the policy files the configuration names.
    others: Vec<Report>,
    /// Classes of `[rate_limits.classes]`, and the defaults, for routes and policies.
    classes: crate::rate_limit::Classes,
    default_classes: Vec<Arc<crate::rate_limit::LimitClass>>,
    sources: &'s Sources,
}

const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Between requests on a client connection (nginx's `keepalive_timeout` is 75 s).
const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// One year, the minimum the HSTS preload list accepts.
const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

impl Check<'_> {
    fn error(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Deserializes one section, reporting a type error at its place. `None` when it
    /// failed: its later checks are skipped so one mistake is reported once.
    fn section<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        name: &str,
        value: Option<Spanned<DeValue<'_>>>,
    ) -> Option<T> {
        let Some(value) = value else {
            return Some(T::default());
        };
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(section) => Some(section),
            Err(error) => {
                self.error(
                    Problem::error(format!("in [{name}]: {}", error.message().trim()))
                        .at(error.span().unwrap_or(span))
                        .help("deploy/portcullis.example.toml lists every key with its type"),
                );
                None
            }
        }
    }

    fn config(&mut self, path: &Path, mut root: DeTable<'_>) -> Option<Config> {
        let unknown: Vec<(String, Range<usize>)> = root
            .iter()
            .filter(|(key, _)| !raw::SECTIONS.contains(&key.get_ref().as_ref()))
            .map(|(key, _)| (key.get_ref().to_string(), key.span()))
            .collect();
        for (key, span) in unknown {
            let mut problem = Problem::error(format!("unknown section `{key}`")).at(span);
            problem = match diagnostic::nearest(&key, raw::SECTIONS.iter().copied()) {
                Some(near) => problem.help(format!("did you mean `{near}`?")),
                None => problem.help(format!("known sections: {}", raw::SECTIONS.join(", "))),
            };
            self.error(problem);
        }

        let listen: Option<raw::Listen> = self.section("listen", root.remove("listen"));
        let tls: Option<raw::Tls> = self.section("tls", root.remove("tls"));
        let hsts: raw::Hsts = self
            .section("hsts", root.remove("hsts"))
            .unwrap_or_default();
        let server: raw::Server = self
            .section("server", root.remove("server"))
            .unwrap_or_default();
        let log: raw::Log = self.section("log", root.remove("log")).unwrap_or_default();
        let admin: raw::Admin = self
            .section("admin", root.remove("admin"))
            .unwrap_or_default();
        let audit: raw::Audit = self
            .section("audit", root.remove("audit"))
            .unwrap_or_default();
        // Where a section's header is, for problems about the section as a whole.
        let header = |name: &str| {
            root.iter()
                .find(|(key, _)| key.get_ref().as_ref() == name)
                .map(|(key, _)| key.span())
        };
        let directory_span = header("directory");
        let flexmeasures_span = header("flexmeasures");
        let redis_span = header("redis");
        let web_login_span = header("web_login");
        let mail_span = header("mail");
        let directory: Option<raw::Directory> = root
            .get("directory")
            .is_some()
            .then(|| self.section("directory", root.remove("directory")))
            .flatten();
        let tokens: raw::Tokens = self
            .section("tokens", root.remove("tokens"))
            .unwrap_or_default();
        let flexmeasures: Option<raw::FlexMeasures> = root
            .get("flexmeasures")
            .is_some()
            .then(|| self.section("flexmeasures", root.remove("flexmeasures")))
            .flatten();
        let redis: Option<raw::Redis> = root
            .get("redis")
            .is_some()
            .then(|| self.section("redis", root.remove("redis")))
            .flatten();
        let identity_headers: raw::IdentityHeaders = self
            .section("identity_headers", root.remove("identity_headers"))
            .unwrap_or_default();
        let policies: raw::Policies = self
            .section("policies", root.remove("policies"))
            .unwrap_or_default();
        let rate_limits: raw::RateLimits = self
            .section("rate_limits", root.remove("rate_limits"))
            .unwrap_or_default();
        let web_login: Option<raw::WebLogin> = root
            .get("web_login")
            .is_some()
            .then(|| self.section("web_login", root.remove("web_login")))
            .flatten();
        let mail: Option<raw::Mail> = root
            .get("mail")
            .is_some()
            .then(|| self.section("mail", root.remove("mail")))
            .flatten();
        let backends_value = root.remove("backends");
        let routes_value = root.remove("route");

        let mut spans = SpanIndex::default();
        let listen = listen.and_then(|listen| self.listen(listen));
        let tls = tls.and_then(|tls| self.tls(tls, &mut spans));
        let hsts = self.hsts(hsts);
        let server = self.server(server);
        let log = self.log(log);
        let admin = self.admin(admin, listen.as_ref());
        let audit = self.audit(audit);
        self.has_directory = directory.is_some();
        let native = directory.as_ref().is_some_and(|d| {
            d.kind
                .as_ref()
                .is_none_or(|kind| kind.get_ref() == "native")
        });
        // Native tokens need a signing secret; FlexMeasures' are signed with its key.
        let tokens = self.tokens(tokens, directory_span.clone().filter(|_| native));
        let directory_span_for_state = directory_span.clone();
        let directory =
            directory.and_then(|directory| self.directory(directory, directory_span.clone()));
        let flexmeasures = match (&directory, flexmeasures) {
            (Some(settings), Some(raw)) if settings.kind == DirectoryKind::FlexMeasures => {
                self.flexmeasures(raw, flexmeasures_span)
            }
            (Some(settings), None) if settings.kind == DirectoryKind::FlexMeasures => {
                self.error(
                    Problem::error("`kind = \"flexmeasures\"` needs a `[flexmeasures]` section")
                        .at_opt(directory_span)
                        .help("add `[flexmeasures]` with `secret_key` (FlexMeasures' SECRET_KEY); see deploy/portcullis.example.toml"),
                );
                None
            }
            (_, Some(_)) => {
                self.error(
                    Problem::error("`[flexmeasures]` is for `[directory] kind = \"flexmeasures\"`")
                        .at_opt(flexmeasures_span)
                        .help("set `kind = \"flexmeasures\"` in [directory], or remove [flexmeasures]"),
                );
                None
            }
            _ => None,
        };
        let redis = redis.and_then(|redis| self.redis(redis, redis_span));
        let mut rate_limits = self.rate_limits(rate_limits, redis.is_some());
        if let Some(settings) = &directory
            && settings.kind == DirectoryKind::FlexMeasures
            && settings.state.is_none()
            && !rate_limits.lockout.is_zero()
        {
            self.error(
                Problem::warning("login lockouts are off: a FlexMeasures directory keeps them in `[directory] state`, which is not set")
                    .at_opt(directory_span_for_state.clone())
                    .help("set `state = \"sqlite:/var/lib/portcullis/state.db\"` (one instance) or a PostgreSQL database of the gateway's own (several), or `[rate_limits] lockout = \"0s\"` to silence this"),
            );
            rate_limits.lockout = Duration::ZERO;
        }
        self.classes = rate_limits.classes.clone();
        self.default_classes = rate_limits::default_classes(&rate_limits);
        let web_login = match (web_login, &directory) {
            (None, _) => {
                if mail.is_some() {
                    self.error(
                        Problem::warning("`[mail]` is unused: only the web login sends mail")
                            .at_opt(mail_span)
                            .help("add `[web_login]`, or remove `[mail]`"),
                    );
                }
                None
            }
            (Some(raw), Some(settings)) if settings.kind == DirectoryKind::Native => {
                self.web_login(raw, mail, web_login_span)
            }
            (Some(_), _) => {
                self.error(
                    Problem::error("`[web_login]` needs the native directory (`[directory]` with `kind = \"native\"`)")
                        .at_opt(web_login_span)
                        .help("users who log in on the gateway's pages live in its own directory; in front of FlexMeasures, use FlexMeasures' own login for its UI"),
                );
                None
            }
        };
        self.has_web_login = web_login.is_some();
        let identity_headers = self.identity_headers(identity_headers);
        let backends = self.backends(backends_value, &mut spans);
        if let Some(settings) = &flexmeasures {
            self.flexmeasures_backend(settings, &backends);
        }
        let policies_dir = policies.dir.as_ref().map(|dir| self.path(dir.get_ref()));
        let policies_reload_interval = self.duration(
            policies.reload_interval,
            Duration::from_secs(1),
            Duration::ZERO..Duration::from_secs(3601),
            "reload_interval",
        );
        let (routes, rules) = match policies.dir {
            Some(dir) => {
                if let Some(routes) = &routes_value {
                    self.error(
                        Problem::error("[[route]] tables and `[policies]` both define routes")
                            .at(routes.span())
                            .help("with `[policies]`, routes live in the policy files; move these there as [[route]] rules"),
                    );
                }
                (RouteTable::default(), self.policies(&dir, &backends))
            }
            None => (self.routes(routes_value, &backends), None),
        };

        Some(Config {
            path: path.to_path_buf(),
            listen: listen?,
            tls: tls?,
            hsts,
            server,
            log,
            admin,
            audit,
            directory,
            flexmeasures,
            tokens,
            redis,
            identity_headers,
            backends,
            routes,
            rules,
            rate_limits,
            web_login,
            policies_dir,
            policies_reload_interval,
            spans,
        })
    }

    /// Loads the policy files; their reports are attached to this one.
    fn policies(
        &mut self,
        dir: &Spanned<String>,
        backends: &BTreeMap<Arc<str>, Backend>,
    ) -> Option<Arc<crate::policy::rules::RuleSet>> {
        let path = self.path(dir.get_ref());
        if !path.is_dir() {
            self.error(
                Problem::error(format!(
                    "the policy directory `{}` does not exist",
                    path.display()
                ))
                .at(dir.span())
                .help("create it with policy files (see policies/example.toml)"),
            );
            return None;
        }
        let inputs = crate::policy::file::Inputs {
            backends: crate::policy::file::backend_names(backends),
            database: self.has_directory,
            classes: self.classes.clone(),
            default: self.default_classes.clone(),
        };
        let loaded = crate::policy::file::load(&path, &inputs);
        self.others.extend(loaded.reports);
        loaded.rules.map(Arc::new)
    }

    fn duration(
        &mut self,
        value: Option<Spanned<DurationText>>,
        default: Duration,
        range: Range<Duration>,
        key: &str,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let span = value.span();
        let parsed = match value.into_inner() {
            DurationText::Seconds(seconds) => u64::try_from(seconds).map(Duration::from_secs).ok(),
            DurationText::Text(text) => humantime::parse_duration(text.trim()).ok(),
        };
        match parsed {
            Some(duration) if range.contains(&duration) => duration,
            Some(_) => {
                self.error(
                    Problem::error(format!(
                        "`{key}` must be at least {} and below {}",
                        readable(range.start),
                        readable(range.end)
                    ))
                    .at(span),
                );
                default
            }
            None => {
                self.error(
                    Problem::error(format!("`{key}` is not a duration"))
                        .at(span)
                        .label("not a duration")
                        .help("write a duration like \"500ms\", \"10s\", \"5m\", \"30d\", or whole seconds"),
                );
                default
            }
        }
    }

    fn addresses(&mut self, list: Spanned<raw::StringList>, key: &str) -> Vec<SocketAddr> {
        let span = list.span();
        let mut addresses = Vec::new();
        for text in list.into_inner().0 {
            match text.trim().parse::<SocketAddr>() {
                Ok(address) => addresses.push(address),
                Err(_) => self.error(
                    Problem::error(format!("`{text}` in `{key}` is not an IP address and port"))
                        .at(span.clone())
                        .help("write it as \"0.0.0.0:8443\", \"127.0.0.1:8443\" or \"[::]:8443\""),
                ),
            }
        }
        addresses
    }

    fn listen(&mut self, raw: raw::Listen) -> Option<Listen> {
        let Some(https_list) = raw.https else {
            self.error(
                Problem::error("no https listener: `[listen] https` is missing")
                    .at(0..0)
                    .help("add `[listen]` with `https = [\"0.0.0.0:8443\"]`"),
            );
            return None;
        };
        let https_span = https_list.span();
        let https = self.addresses(https_list, "https");
        if https.is_empty() {
            self.error(
                Problem::error("`https` lists no address")
                    .at(https_span)
                    .help("the gateway needs at least one TLS listener"),
            );
            return None;
        }
        let http = match raw.http {
            Some(list) => {
                let span = list.span();
                let http = self.addresses(list, "http");
                for address in &http {
                    if https.contains(address) {
                        self.error(
                            Problem::error(format!(
                                "`{address}` is both an https and an http listener"
                            ))
                            .at(span.clone())
                            .help("give the redirecting http listener its own port"),
                        );
                    }
                }
                http
            }
            None => Vec::new(),
        };
        let default_port = https.first().map_or(443, SocketAddr::port);
        let redirect_port = match raw.redirect_port {
            Some(port) => {
                let span = port.span();
                match u16::try_from(*port.get_ref()) {
                    Ok(port) if port > 0 => port,
                    _ => {
                        self.error(
                            Problem::error("`redirect_port` must be a port number from 1 to 65535")
                                .at(span),
                        );
                        default_port
                    }
                }
            }
            None => default_port,
        };
        Some(Listen {
            https,
            http,
            redirect_port,
        })
    }

    fn audit(&mut self, raw: raw::Audit) -> AuditSettings {
        let capacity = self.count(raw.capacity, 10_000, 10_000_000, "capacity");
        let target = match raw.path {
            Some(path) if path.get_ref() != "-" => {
                let file = self.path(path.get_ref());
                if let Some(dir) = file.parent().filter(|dir| !dir.is_dir()) {
                    self.error(
                        Problem::warning(format!(
                            "the audit log's directory `{}` does not exist: audit records are lost until it does",
                            dir.display()
                        ))
                        .at(path.span())
                        .help("create it, writable by the gateway's user (systemd: LogsDirectory=), or write to stdout with path = \"-\""),
                    );
                }
                crate::audit::AuditTarget::File(file)
            }
            _ => crate::audit::AuditTarget::Stdout,
        };
        AuditSettings { target, capacity }
    }

    fn admin(&mut self, raw: raw::Admin, listen: Option<&Listen>) -> Vec<SocketAddr> {
        let Some(list) = raw.listen else {
            return vec![DEFAULT_ADMIN];
        };
        let span = list.span();
        let addresses = self.addresses(list, "listen");
        for address in &addresses {
            if listen.is_some_and(|l| l.https.contains(address) || l.http.contains(address)) {
                self.error(
                    Problem::error(format!(
                        "`{address}` is both an admin and a public listener"
                    ))
                    .at(span.clone())
                    .help(
                        "serve /metrics on a port of its own, on loopback or an internal network",
                    ),
                );
            }
            if !address.ip().is_loopback() {
                self.error(
                    Problem::warning(format!("admin listener `{address}` is reachable from other machines"))
                        .at(span.clone())
                        .help("metrics and health need no authentication; expose them only to your monitoring network"),
                );
            }
        }
        addresses
    }

    fn path(&self, text: &str) -> PathBuf {
        let path = Path::new(text);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn tls(&mut self, raw: raw::Tls, spans: &mut SpanIndex) -> Option<TlsFiles> {
        let file = |check: &mut Self, value: Option<Spanned<String>>, key: &str| {
            let Some(value) = value else {
                check.error(
                    Problem::error(format!("`[tls] {key}` is missing"))
                        .at(0..0)
                        .help("run `portcullis certs dev` for a development certificate, or point at your PEM files"),
                );
                return None;
            };
            Some((check.path(value.get_ref()), value.span()))
        };
        let certificate = file(self, raw.certificate, "certificate");
        let private_key = file(self, raw.private_key, "private_key");
        let expiry_warning = self.duration(
            raw.expiry_warning,
            DEFAULT_EXPIRY_WARNING,
            Duration::ZERO..Duration::from_secs(3650 * 24 * 3600),
            "expiry_warning",
        );
        let reload_interval = self.duration(
            raw.reload_interval,
            Duration::from_secs(30),
            Duration::ZERO..Duration::from_secs(24 * 3600 + 1),
            "reload_interval",
        );
        let (certificate, certificate_span) = certificate?;
        let (private_key, private_key_span) = private_key?;
        spans.certificate = Some(certificate_span);
        spans.private_key = Some(private_key_span);
        Some(TlsFiles {
            certificate,
            private_key,
            expiry_warning,
            reload_interval,
        })
    }

    fn hsts(&mut self, raw: raw::Hsts) -> Hsts {
        let max_age = self.duration(
            raw.max_age,
            DEFAULT_HSTS_MAX_AGE,
            Duration::ZERO..Duration::from_secs(10 * 365 * 24 * 3600),
            "max_age",
        );
        let include_subdomains = raw.include_subdomains.unwrap_or(false);
        let preload = match raw.preload {
            Some(preload) if *preload.get_ref() => {
                // https://hstspreload.org/#submission-requirements
                if max_age < DEFAULT_HSTS_MAX_AGE || !include_subdomains {
                    self.error(
                        Problem::error("`preload` needs `max_age` of at least one year and `include_subdomains = true`")
                            .at(preload.span())
                            .help("browsers' preload lists refuse weaker policies; set both or drop `preload`"),
                    );
                }
                true
            }
            _ => false,
        };
        Hsts {
            max_age,
            include_subdomains,
            preload,
        }
    }

    fn count(
        &mut self,
        value: Option<Spanned<i64>>,
        default: usize,
        max: usize,
        key: &str,
    ) -> usize {
        let Some(value) = value else {
            return default;
        };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                self.error(
                    Problem::error(format!("`{key}` must be from 1 to {max}")).at(value.span()),
                );
                default
            }
        }
    }

    /// A setting that takes one of a few words: the value `choices` pairs with the
    /// word, `default` without the setting, `None` for an unknown word. That one is
    /// reported at the word as "unknown {what} `word`", with "did you mean …?" for a
    /// near miss, else `help`.
    fn keyword<T: Copy>(
        &mut self,
        word: Option<&Spanned<String>>,
        choices: &[(&str, T)],
        default: T,
        what: &str,
        help: &str,
    ) -> Option<T> {
        let Some(word) = word else {
            return Some(default);
        };
        let text = word.get_ref().as_str();
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let problem = Problem::error(format!("unknown {what} `{text}`")).at(word.span());
        self.error(
            match diagnostic::nearest(text, choices.iter().map(|(name, _)| *name)) {
                Some(near) => problem.help(format!("did you mean `{near}`?")),
                None => problem.help(help),
            },
        );
        None
    }

    fn server(&mut self, raw: raw::Server) -> ServerSettings {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = self.count(raw.threads, cpus, 1024, "threads");
        let keepalive_pool_size = self.count(
            raw.keepalive_pool_size,
            128,
            1_000_000,
            "keepalive_pool_size",
        );
        let grace_period = self.duration(
            raw.grace_period,
            DEFAULT_GRACE_PERIOD,
            Duration::ZERO..Duration::from_secs(3601),
            "grace_period",
        );
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout,
            DEFAULT_SHUTDOWN_TIMEOUT,
            Duration::ZERO..Duration::from_secs(3601),
            "shutdown_timeout",
        );
        // pingora counts keep-alive in whole seconds.
        let client_idle_timeout = Duration::from_secs(
            self.duration(
                raw.client_idle_timeout,
                DEFAULT_CLIENT_IDLE_TIMEOUT,
                Duration::from_secs(1)..Duration::from_secs(3601),
                "client_idle_timeout",
            )
            .as_secs(),
        );
        let mut networks = Vec::new();
        if let Some(list) = raw.trusted_proxies {
            let span = list.span();
            for text in list.into_inner().0 {
                let text = text.trim();
                let parsed = text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(network) => networks.push(network),
                    Err(_) => self.error(
                        Problem::error(format!("`{text}` in `trusted_proxies` is not an address or network"))
                            .at(span.clone())
                            .help("write addresses or CIDR networks: \"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\""),
                    ),
                }
            }
        }
        ServerSettings {
            threads,
            grace_period,
            shutdown_timeout,
            trusted_proxies: TrustedProxies::new(networks),
            keepalive_pool_size,
            client_idle_timeout,
        }
    }

    fn log(&mut self, raw: raw::Log) -> LogSettings {
        let format = self
            .keyword(
                raw.format.as_ref(),
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                LogFormat::Text,
                "log format",
                "use \"text\" or \"json\"",
            )
            .unwrap_or(LogFormat::Text);
        let filter = match raw.level {
            None => "info".to_owned(),
            Some(level) => {
                if tracing_subscriber::EnvFilter::try_new(level.get_ref()).is_err() {
                    self.error(
                        Problem::error(format!("`{}` is not a log filter", level.get_ref()))
                            .at(level.span())
                            .help("use a level (error, warn, info, debug, trace) or directives like \"info,pingora=warn\""),
                    );
                }
                level.into_inner()
            }
        };
        LogSettings { format, filter }
    }

    fn backends(
        &mut self,
        value: Option<Spanned<DeValue<'_>>>,
        spans: &mut SpanIndex,
    ) -> BTreeMap<Arc<str>, Backend> {
        let mut backends = BTreeMap::new();
        let Some(value) = value else {
            return backends;
        };
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error(
                Problem::error("`backends` must be a table of named backends")
                    .at(span)
                    .help("declare each backend as [backends.NAME] with an `address`"),
            );
            return backends;
        };
        for (name, value) in table {
            let name_span = name.span();
            let name: Arc<str> = name.into_inner().as_ref().into();
            if !is_identifier(&name) {
                self.error(
                    Problem::error(format!("backend name `{name}` has characters other than letters, digits, `-` and `_`"))
                        .at(name_span.clone()),
                );
            }
            let Some(raw) = self.section::<raw::Backend>(&format!("backends.{name}"), Some(value))
            else {
                self.broken_backends.insert(name.to_string());
                continue;
            };
            if let Some(backend) = self.backend(name.clone(), raw, name_span, spans) {
                backends.insert(name, backend);
            }
        }
        backends
    }

    fn backend(
        &mut self,
        name: Arc<str>,
        raw: raw::Backend,
        name_span: Range<usize>,
        spans: &mut SpanIndex,
    ) -> Option<Backend> {
        let timeout = |check: &mut Self, value, default: u64, key: &str| {
            check.duration(
                value,
                Duration::from_secs(default),
                Duration::from_millis(1)..Duration::from_secs(3601),
                key,
            )
        };
        let connect_timeout = timeout(self, raw.connect_timeout, 5, "connect_timeout");
        let read_timeout = timeout(self, raw.read_timeout, 60, "read_timeout");
        let write_timeout = timeout(self, raw.write_timeout, 60, "write_timeout");
        let idle_timeout = timeout(self, raw.idle_timeout, 60, "idle_timeout");
        let Some(address) = raw.address else {
            self.error(
                Problem::error(format!("backend `{name}` has no `address`"))
                    .at(name_span)
                    .help("add `address = \"HOST:PORT\"`, e.g. \"127.0.0.1:5000\""),
            );
            return None;
        };
        let address_span = address.span();
        let address_text = address.into_inner();
        let resolved = address_text.to_socket_addrs().map(|mut found| found.next());
        let socket = match resolved {
            Ok(Some(socket)) => socket,
            Ok(None) | Err(_) => {
                self.error(
                    Problem::error(format!("backend address `{address_text}` does not resolve"))
                        .at(address_span)
                        .help("write HOST:PORT with a resolvable host name or an IP address; names are resolved once at start"),
                );
                return None;
            }
        };
        let tls = if raw.tls.unwrap_or(false) {
            let host = address_text
                .rsplit_once(':')
                .map_or(address_text.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let ca = raw.ca.map(|ca| {
                spans.backend_ca.insert(name.clone(), ca.span());
                self.path(ca.get_ref())
            });
            Some(BackendTls {
                sni: raw.sni.map_or(host, Spanned::into_inner),
                verify_certificate: raw.verify_certificate.unwrap_or(true),
                ca,
            })
        } else {
            for (key, present) in [
                ("sni", raw.sni.as_ref().map(Spanned::span)),
                ("ca", raw.ca.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = present {
                    self.error(
                        Problem::error(format!(
                            "`{key}` is set but backend `{name}` does not use TLS"
                        ))
                        .at(span)
                        .help("add `tls = true` or remove the key"),
                    );
                }
            }
            None
        };
        Some(Backend {
            name,
            address_text,
            address: socket,
            tls,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
        })
    }

    fn routes(
        &mut self,
        value: Option<Spanned<DeValue<'_>>>,
        backends: &BTreeMap<Arc<str>, Backend>,
    ) -> RouteTable {
        let Some(value) = value else {
            self.error(
                Problem::warning("no routes: every request will be refused with 404")
                    .at(0..0)
                    .help("add a [[route]] with `id`, `path_prefix`, `backend` and `auth`"),
            );
            return RouteTable::default();
        };
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            self.error(
                Problem::error("`route` must be an array of tables")
                    .at(span)
                    .help("write each route as a [[route]] table"),
            );
            return RouteTable::default();
        };
        let mut routes = Vec::new();
        let mut ids: HashMap<String, Range<usize>> = HashMap::new();
        let mut places: HashMap<(HostPattern, String), (String, Range<usize>)> = HashMap::new();
        for item in items.iter() {
            let item_span = item.span();
            let raw = match raw::Route::deserialize(ValueDeserializer::from(item.clone())) {
                Ok(raw) => raw,
                Err(error) => {
                    self.error(
                        Problem::error(format!("in [[route]]: {}", error.message().trim()))
                            .at(error.span().unwrap_or(item_span))
                            .help("a route has `id`, `path_prefix`, `backend`, `auth` and optionally `host`"),
                    );
                    continue;
                }
            };
            if let Some(route) = self.route(raw, backends, &mut ids, &mut places) {
                routes.push(route);
            }
        }
        RouteTable::new(routes)
    }

    fn route(
        &mut self,
        raw: raw::Route,
        backends: &BTreeMap<Arc<str>, Backend>,
        ids: &mut HashMap<String, Range<usize>>,
        places: &mut HashMap<(HostPattern, String), (String, Range<usize>)>,
    ) -> Option<Route> {
        let mut valid = true;
        let id = raw.id.get_ref().clone();
        if !is_identifier(&id) {
            valid = false;
            self.error(
                Problem::error(format!(
                    "route id `{id}` has characters other than letters, digits, `-` and `_`"
                ))
                .at(raw.id.span()),
            );
        }
        if let Some(first) = ids.insert(id.clone(), raw.id.span()) {
            valid = false;
            let line = self.line_hint(&first);
            self.error(
                Problem::error(format!("route id `{id}` is used twice"))
                    .at(raw.id.span())
                    .help(format!("ids must be unique; the first `{id}` is {line}")),
            );
        }
        let host = HostPattern::parse(raw.host.get_ref());
        if host.is_none() {
            valid = false;
            self.error(
                Problem::error(format!("`{}` is not a host pattern", raw.host.get_ref()))
                    .at(raw.host.span())
                    .help("use \"*\", a host name like \"api.example.com\" or \"*.example.com\"; no port"),
            );
        }
        let prefix = normalize_prefix(raw.path_prefix.get_ref());
        if prefix.is_none() {
            valid = false;
            self.error(
                Problem::error(format!("path prefix `{}` is not a canonical path", raw.path_prefix.get_ref()))
                    .at(raw.path_prefix.span())
                    .help("start with `/`; no `//`, `.` or `..` segments, `;`, `%2F`, or escapes of plain letters"),
            );
        }
        let backend_name = raw.backend.get_ref().as_str();
        let backend = backends
            .get_key_value(backend_name)
            .map(|(name, _)| name.clone());
        if backend.is_none() && self.broken_backends.contains(backend_name) {
            valid = false;
        } else if backend.is_none() {
            valid = false;
            let help = match diagnostic::nearest(backend_name, backends.keys().map(AsRef::as_ref)) {
                Some(near) => format!("did you mean `{near}`?"),
                None if backends.is_empty() => {
                    "declare a backend as [backends.NAME] with an `address`".to_owned()
                }
                None => format!(
                    "declared backends: {}",
                    backends
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.error(
                Problem::error(format!("unknown backend `{backend_name}`"))
                    .at(raw.backend.span())
                    .label("not declared under [backends]")
                    .help(help),
            );
        }
        let access = Access::parse(raw.auth.get_ref());
        match access {
            None => {
                valid = false;
                let name = raw.auth.get_ref();
                let help = match diagnostic::nearest(name, Access::NAMES.iter().copied()) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("use one of: {}", Access::NAMES.join(", ")),
                };
                self.error(
                    Problem::error(format!("unknown auth mode `{name}`"))
                        .at(raw.auth.span())
                        .help(help),
                );
            }
            Some(Access::Public) => {}
            Some(Access::Token) if self.has_directory => {}
            Some(Access::Session | Access::TokenOrSession) if self.has_web_login => {}
            Some(Access::TokenOrSession) if self.has_directory => {}
            Some(Access::Session) => self.error(
                Problem::warning(format!(
                    "route `{id}` requires a web-login session, but there is no `[web_login]`: every request to it is refused with 401"
                ))
                .at(raw.auth.span())
                .help("add `[web_login]` (see deploy/portcullis.example.toml), or use `token` for API routes"),
            ),
            Some(other) => self.error(
                Problem::warning(format!(
                    "route `{id}` requires `{}` credentials, but there is no `[directory]` to verify them: every request to it is refused with 401",
                    other.name()
                ))
                .at(raw.auth.span())
                .help("add `[directory]` and `[tokens]` (see deploy/portcullis.example.toml), or mark the route `public`"),
            ),
        }
        let (Some(host), Some(prefix), Some(backend), Some(access)) =
            (host, prefix, backend, access)
        else {
            return None;
        };
        let place = (host.clone(), prefix.clone());
        if let Some((other, other_span)) = places.get(&place) {
            let line = self.line_hint(other_span);
            self.error(
                Problem::error(format!(
                    "routes `{other}` and `{id}` both match host `{host}` and path prefix `{prefix}`"
                ))
                .at(raw.path_prefix.span())
                .help(format!("give one of them another host or prefix; `{other}` is {line}")),
            );
            return None;
        }
        places.insert(place, (id.clone(), raw.path_prefix.span()));
        let rate_limits = rate_limits::rule_classes(
            raw.rate_limit.as_ref(),
            &self.classes,
            &self.default_classes,
            &mut self.problems,
        )?;
        let mfa = self.mfa(raw.mfa.as_ref(), access);
        valid.then(|| Route {
            id: id.into(),
            host,
            path_prefix: prefix,
            backend,
            access,
            mfa,
            rate_limits,
        })
    }

    /// `mfa` of a route: whether a session must have passed the second factor
    /// (default: yes). Only sessions are asked; on other routes it is a mistake.
    fn mfa(&mut self, mfa: Option<&Spanned<bool>>, access: Access) -> bool {
        if let Some(mfa) = mfa
            && !matches!(access, Access::Session | Access::TokenOrSession)
        {
            self.error(
                Problem::warning(format!(
                    "`mfa` only applies to session routes; this one is `{}`",
                    access.name()
                ))
                .at(mfa.span())
                .help("remove `mfa`, or set `auth = \"session\"` or `\"token-or-session\"`"),
            );
        }
        mfa.is_none_or(|mfa| *mfa.get_ref())
    }

    /// "at file:line:col", for hints that name a second place.
    fn line_hint(&self, span: &Range<usize>) -> String {
        format!("at {}", self.sources.position(span))
    }
}

/// `3650d`, `1h`, `500ms`: a limit as an operator would write it.
fn readable(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 if duration.subsec_millis() > 0 => format!("{}ms", duration.as_millis()),
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s => format!("{s}s"),
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
