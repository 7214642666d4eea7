//! Fourth stage of the flow: whether the caller may make another request now.
//!
//! Operators declare limit classes (`api = "500/min per user"`, see [`spec`]) in
//! `[rate_limits.classes]` of the configuration or `[rate_limits]` of a policy file,
//! and rules name the classes that apply to them (`rate_limit = "api"`; several may).
//! Rules that name none get `[rate_limits] default`. Each limit of a class keeps one
//! GCRA budget per key: client address, user, account, route, login name, or a
//! combination.
//!
//! Budgets live in this process (governor, [`local`]) or, with `store = "redis"`, in
//! Redis, where one script checks every limit of a request at once on Redis's clock
//! so N instances enforce one global limit. When Redis cannot answer,
//! `on_store_error` decides: `local` (the default) counts in this process instead,
//! so each instance still enforces the limit on its own share of the traffic; `deny`
//! refuses with 503; `allow` lets requests through unlimited. After a failure Redis
//! is left alone for a second so requests do not each wait for its timeout.
//!
//! The login endpoint has limits of its own (DESIGN §6, brute-force protection):
//! every attempt counts against `login`, failed ones against `login_failures`, and a
//! key that exceeds `login_failures` is locked out for `lockout` (see [`lockout`]).

pub mod local;
pub mod lockout;
pub mod spec;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};

use crate::directory::{AccountId, UserId};
use crate::metrics::Metrics;
use crate::store::{Cluster, GcraAnswer, GcraKey, StoreError};
use local::{LocalLimit, Outcome};
use spec::{Key, Limit};

/// One limit of a class, with the names it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLimit {
    pub limit: Limit,
    /// `class/fingerprint`: names its budgets, locally and in Redis. Changing the
    /// limit changes the fingerprint, so a new quota starts with fresh budgets.
    pub id: Arc<str>,
    /// Its name in `RateLimit` headers: the class, with `.N` when it has several.
    pub policy: Arc<str>,
}

/// A named set of limits, all of which apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitClass {
    pub name: Arc<str>,
    pub text: String,
    pub limits: Vec<ClassLimit>,
}

impl LimitClass {
    pub fn parse(name: &str, text: &str) -> Result<Self, spec::SpecError> {
        let limits = spec::parse(text)?;
        let several = limits.len() > 1;
        let limits = limits
            .into_iter()
            .enumerate()
            .map(|(index, limit)| {
                let digest = ring::digest::digest(
                    &ring::digest::SHA256,
                    format!("{index}:{limit}").as_bytes(),
                );
                let fingerprint: String = digest
                    .as_ref()
                    .iter()
                    .take(4)
                    .map(|b| format!("{b:02x}"))
                    .collect();
                ClassLimit {
                    id: format!("{name}/{fingerprint}").into(),
                    policy: if several {
                        format!("{name}.{}", index + 1).into()
                    } else {
                        name.into()
                    },
                    limit,
                }
            })
            .collect();
        Ok(Self {
            name: name.into(),
            text: text.trim().to_owned(),
            limits,
        })
    }

    /// Whether any limit counts per `key`.
    pub fn uses(&self, key: Key) -> bool {
        self.limits.iter().any(|l| l.limit.keys.contains(key))
    }
}

/// Classes by name.
pub type Classes = BTreeMap<Arc<str>, Arc<LimitClass>>;

/// A valid class name: letters, digits, `-`, `_` and `.`.
pub fn is_class_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Where budgets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Local,
    Redis,
}

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Count in this process instead (the default): every instance still limits.
    Local,
    /// Refuse with 503 until Redis answers again.
    Deny,
    /// Admit without limits.
    Allow,
}

/// `[rate_limits]`, checked.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub store: Store,
    pub on_store_error: OnStoreError,
    /// Keys kept per limit in this process.
    pub max_keys: usize,
    pub housekeeping_interval: Duration,
    /// IPv6 clients are counted by this prefix (a host usually has a whole /64).
    pub ipv6_prefix: u8,
    /// Classes declared in the configuration file.
    pub classes: Classes,
    /// For rules that name no class.
    pub default: Vec<Arc<str>>,
    /// Every login attempt.
    pub login: Option<Arc<LimitClass>>,
    /// Failed login attempts; exceeding one locks the key out.
    pub login_failures: Option<Arc<LimitClass>>,
    /// How long a lockout lasts; zero: no lockouts (only `login` limits attempts).
    pub lockout: Duration,
    /// Every second-factor code tried on the web login.
    pub second_factor: Option<Arc<LimitClass>>,
}

pub const DEFAULT_LOGIN: &str = "20/min per ip";
pub const DEFAULT_LOGIN_FAILURES: &str = "5/15min per login and 30/15min per ip";
pub const DEFAULT_SECOND_FACTOR: &str = "10/15min per login and 50/15min per ip";
pub const DEFAULT_LOCKOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MAX_KEYS: usize = 100_000;

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            store: Store::Local,
            on_store_error: OnStoreError::Local,
            max_keys: DEFAULT_MAX_KEYS,
            housekeeping_interval: Duration::from_secs(60),
            ipv6_prefix: 64,
            classes: Classes::new(),
            default: Vec::new(),
            login: LimitClass::parse("login", DEFAULT_LOGIN).ok().map(Arc::new),
            login_failures: LimitClass::parse("login-failures", DEFAULT_LOGIN_FAILURES)
                .ok()
                .map(Arc::new),
            lockout: DEFAULT_LOCKOUT,
            second_factor: LimitClass::parse("second-factor", DEFAULT_SECOND_FACTOR)
                .ok()
                .map(Arc::new),
        }
    }
}

/// What a request is counted as.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub ip: IpAddr,
    pub user: Option<UserId>,
    pub account: Option<AccountId>,
    pub route: &'a str,
    /// The login name, at a login endpoint.
    pub login: Option<&'a str>,
}

/// Longest login name used as a key as it is; longer ones (never valid emails) are
/// hashed so a key stays small.
const MAX_LOGIN_KEY: usize = 254;

impl Subject<'_> {
    /// The key of `limit` for this request: `ip=…`, `user=17|route=…`. Anonymous
    /// callers are counted by their address where a user or account is asked for.
    pub fn key(&self, limit: &Limit, ipv6_prefix: u8) -> String {
        // Written piece by piece: this runs for every limit of every request.
        let ip = || crate::forwarding::ip_text(network(self.ip, ipv6_prefix));
        let mut digits = itoa::Buffer::new();
        let mut key_text = String::with_capacity(48);
        for (index, key) in limit.keys.iter().enumerate() {
            if index > 0 {
                key_text.push('|');
            }
            let owned;
            let (name, value): (&str, &str) = match (key, self.user, self.account, self.login) {
                (Key::User, Some(user), _, _) => ("user=", digits.format(user)),
                (Key::Account, _, Some(account), _) => ("account=", digits.format(account)),
                (Key::Route, ..) => ("route=", self.route),
                (Key::Login, _, _, Some(login)) => {
                    owned = login_key(login);
                    ("", &owned)
                }
                (Key::Ip, ..) => {
                    owned = ip();
                    ("ip=", &owned)
                }
                (Key::User | Key::Account | Key::Login, ..) => {
                    owned = ip();
                    ("anon=", &owned)
                }
            };
            key_text.push_str(name);
            key_text.push_str(value);
        }
        key_text
    }
}

/// `login=name`, lower-cased; long or odd names by their SHA-256.
pub fn login_key(login: &str) -> String {
    let login = login.trim().to_lowercase();
    if login.len() <= MAX_LOGIN_KEY && !login.chars().any(|c| c.is_control() || c == '|') {
        format!("login={login}")
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, login.as_bytes());
        let hex: String = digest
            .as_ref()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("login#{hex}")
    }
}

/// The address a client is counted by: IPv4 as is (also when IPv4-mapped), IPv6 by
/// its first `prefix` bits.
pub fn network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = match prefix {
                    0 => 0,
                    p if p >= 128 => u128::MAX,
                    p => u128::MAX << (128 - u32::from(p)),
                };
                IpAddr::V6((bits & mask).into())
            }
        },
    }
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub class: Arc<str>,
    pub policy: Arc<str>,
    pub limit: Limit,
    /// When the next request under the same key would pass.
    pub retry_after: Duration,
    /// The refused key, for lockouts; never shown to clients.
    pub key: String,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rate limit `{}` ({}) exceeded", self.policy, self.limit)
    }
}

/// Why a request did not pass the rate-limit stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{0}")]
    Exceeded(Exceeded),
    /// Redis could not answer and `on_store_error = "deny"`.
    #[error("rate limits cannot be checked: {0}")]
    Unavailable(String),
}

/// Redis, and what to do without it.
struct Shared {
    cluster: Cluster,
    on_error: OnStoreError,
    /// Milliseconds after `epoch` before which Redis is not asked again.
    resting_until: AtomicU64,
    epoch: Instant,
}

/// How long Redis is left alone after it failed.
const STORE_REST: Duration = Duration::from_secs(1);

/// The budgets: long-lived, kept across policy reloads (a class that did not change
/// keeps its budgets).
pub struct RateLimiter<C: Clock = DefaultClock> {
    local: DashMap<Arc<str>, Arc<LocalLimit<C>>>,
    clock: C,
    max_keys: usize,
    ipv6_prefix: u8,
    shared: Option<Shared>,
    metrics: Arc<Metrics>,
}

impl RateLimiter<DefaultClock> {
    /// Budgets per the settings; `redis`: where shared budgets are kept.
    pub fn new(
        settings: &RateLimitSettings,
        redis: Option<&crate::config::RedisSettings>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let shared = match (settings.store, redis) {
            (Store::Redis, Some(redis)) => Some(Shared {
                cluster: Cluster::open(redis.url.expose(), &redis.prefix, redis.timeout)?,
                on_error: settings.on_store_error,
                resting_until: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
            _ => None,
        };
        Ok(Self::with_clock(
            settings,
            shared,
            DefaultClock::default(),
            metrics,
        ))
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    fn with_clock(
        settings: &RateLimitSettings,
        shared: Option<Shared>,
        clock: C,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            local: DashMap::new(),
            clock,
            max_keys: settings.max_keys,
            ipv6_prefix: settings.ipv6_prefix,
            shared,
            metrics,
        }
    }

    /// Checks a request against every limit of `classes` and counts it. In Redis
    /// all or nothing; locally in order, so a refusal by a later limit has counted
    /// in the earlier ones.
    pub async fn check(
        &self,
        classes: &[Arc<LimitClass>],
        subject: &Subject<'_>,
    ) -> Result<(), LimitError> {
        if classes.is_empty() {
            return Ok(());
        }
        let outcome = match &self.shared {
            // Boxed: the Redis round trip's future would otherwise enlarge every
            // request's, local limits included.
            Some(shared) => Box::pin(self.check_shared(shared, classes, subject)).await,
            None => self
                .check_local(classes, subject)
                .map_err(LimitError::Exceeded),
        };
        if let Err(LimitError::Exceeded(exceeded)) = &outcome {
            self.metrics.rate_limited(&exceeded.class);
        }
        outcome
    }

    /// Counts a failed login under `classes` (`login_failures`); the limit it
    /// exceeded, if any, is the key to lock out. Not a refusal, so not counted in
    /// `rate_limited_total`.
    pub async fn count_failure(
        &self,
        classes: &[Arc<LimitClass>],
        subject: &Subject<'_>,
    ) -> Option<Exceeded> {
        if classes.is_empty() {
            return None;
        }
        let outcome = match &self.shared {
            Some(shared) => self.check_shared(shared, classes, subject).await,
            None => self
                .check_local(classes, subject)
                .map_err(LimitError::Exceeded),
        };
        match outcome {
            Err(LimitError::Exceeded(exceeded)) => Some(exceeded),
            _ => None,
        }
    }

    fn check_local(
        &self,
        classes: &[Arc<LimitClass>],
        subject: &Subject<'_>,
    ) -> Result<(), Exceeded> {
        for class in classes {
            for limit in &class.limits {
                let key = subject.key(&limit.limit, self.ipv6_prefix);
                if let Outcome::Refused { retry_after } = self.local_limit(limit).check(&key) {
                    return Err(Exceeded {
                        class: class.name.clone(),
                        policy: limit.policy.clone(),
                        limit: limit.limit.clone(),
                        retry_after,
                        key,
                    });
                }
            }
        }
        Ok(())
    }

    fn local_limit(&self, limit: &ClassLimit) -> Arc<LocalLimit<C>> {
        if let Some(local) = self.local.get(&limit.id) {
            return local.clone();
        }
        self.local
            .entry(limit.id.clone())
            .or_insert_with(|| {
                Arc::new(LocalLimit::new(
                    &limit.limit,
                    self.max_keys,
                    self.clock.clone(),
                ))
            })
            .clone()
    }

    async fn check_shared(
        &self,
        shared: &Shared,
        classes: &[Arc<LimitClass>],
        subject: &Subject<'_>,
    ) -> Result<(), LimitError> {
        let now = u64::try_from(shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let cause = if now < shared.resting_until.load(Ordering::Relaxed) {
            "redis failed less than a second ago".to_owned()
        } else {
            let mut keys = Vec::new();
            let mut names = Vec::new();
            for class in classes {
                for limit in &class.limits {
                    let key = subject.key(&limit.limit, self.ipv6_prefix);
                    keys.push(GcraKey {
                        key: shared.cluster.key(&format!("rl:{}:{key}", limit.id)),
                        interval: limit.limit.interval(),
                        burst: limit.limit.burst.get(),
                    });
                    names.push((class, limit, key));
                }
            }
            match shared.cluster.gcra(&keys).await {
                Ok(GcraAnswer::Allowed(_)) => return Ok(()),
                Ok(GcraAnswer::Refused { index, wait }) => {
                    let Some((class, limit, key)) = names.into_iter().nth(index) else {
                        return Err(LimitError::Unavailable("bad script answer".into()));
                    };
                    return Err(LimitError::Exceeded(Exceeded {
                        class: class.name.clone(),
                        policy: limit.policy.clone(),
                        limit: limit.limit.clone(),
                        retry_after: wait,
                        key,
                    }));
                }
                Err(error) => {
                    let rest = u64::try_from(STORE_REST.as_millis()).unwrap_or(1000);
                    shared.resting_until.store(now + rest, Ordering::Relaxed);
                    tracing::warn!(error = %error, fallback = ?shared.on_error, "rate-limit store failed");
                    error.to_string()
                }
            }
        };
        self.metrics.rate_limit_store_error();
        match shared.on_error {
            OnStoreError::Local => self
                .check_local(classes, subject)
                .map_err(LimitError::Exceeded),
            OnStoreError::Allow => Ok(()),
            OnStoreError::Deny => Err(LimitError::Unavailable(cause)),
        }
    }

    /// Drops keys whose budgets are full again, and limits without keys (a class
    /// that was removed or changed); returns the number of keys left. Run it every
    /// `housekeeping_interval`.
    pub fn housekeep(&self) -> usize {
        let mut total = 0;
        self.local.retain(|_, local| {
            let left = local.housekeep();
            total += left;
            left > 0
        });
        self.metrics.rate_limit_keys(total);
        total
    }

    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn class(name: &str, text: &str) -> Arc<LimitClass> {
        Arc::new(LimitClass::parse(name, text).expect("valid"))
    }

    fn limiter(clock: FakeRelativeClock) -> RateLimiter<FakeRelativeClock> {
        RateLimiter::with_clock(
            &RateLimitSettings::default(),
            None,
            clock,
            Arc::new(Metrics::new().expect("metrics")),
        )
    }

    fn subject(user: Option<UserId>, ip: &str) -> Subject<'static> {
        Subject {
            ip: ip.parse().expect("ip"),
            user,
            account: user.map(|u| u * 100),
            route: "sensor-read",
            login: None,
        }
    }

    fn check(
        limiter: &RateLimiter<FakeRelativeClock>,
        classes: &[Arc<LimitClass>],
        subject: &Subject<'_>,
    ) -> Result<(), LimitError> {
        block_on(limiter.check(classes, subject))
    }

    /// The local path never awaits; poll it once.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(future)
    }

    #[test]
    fn keys_name_what_they_count() {
        let limit = |text: &str| spec::parse(text).expect("valid").remove(0);
        let alice = subject(Some(7), "192.0.2.1");
        assert_eq!(alice.key(&limit("1/s per ip"), 64), "ip=192.0.2.1");
        assert_eq!(
            alice.key(&limit("1/s per user+route"), 64),
            "user=7|route=sensor-read"
        );
        assert_eq!(alice.key(&limit("1/s per account"), 64), "account=700");
        let anonymous = subject(None, "192.0.2.9");
        assert_eq!(anonymous.key(&limit("1/s per user"), 64), "anon=192.0.2.9");
        let login = Subject {
            login: Some(" Alice@Example.COM "),
            ..anonymous
        };
        assert_eq!(
            login.key(&limit("1/s per login"), 64),
            "login=alice@example.com"
        );
        let long = "a".repeat(300);
        let hashed = Subject {
            login: Some(&long),
            ..anonymous
        }
        .key(&limit("1/s per login"), 64);
        assert!(
            hashed.starts_with("login#") && hashed.len() == 6 + 32,
            "{hashed}"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(network(a, 64), network(b, 64));
        assert_ne!(network(a, 64), network(c, 64));
        assert_ne!(network(a, 128), network(b, 128));
        let mapped = IpAddr::V6(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201]));
        assert_eq!(
            network(mapped, 64),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn a_user_over_the_limit_is_refused_until_the_budget_refills() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(clock.clone());
        let api = [class("api", "2/min per user")];
        let alice = subject(Some(1), "192.0.2.1");
        let bob = subject(Some(2), "192.0.2.1");
        assert!(check(&limiter, &api, &alice).is_ok());
        assert!(check(&limiter, &api, &alice).is_ok());
        let Err(LimitError::Exceeded(exceeded)) = check(&limiter, &api, &alice) else {
            panic!("third request in a minute passed");
        };
        assert_eq!(exceeded.retry_after, Duration::from_secs(30));
        assert_eq!(&*exceeded.policy, "api");
        assert!(
            check(&limiter, &api, &bob).is_ok(),
            "bob has his own budget"
        );
        clock.advance(Duration::from_secs(30));
        assert!(check(&limiter, &api, &alice).is_ok());
    }

    #[test]
    fn every_limit_of_every_class_applies() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(clock);
        let classes = [
            class("api", "100/min per user"),
            class("strict", "1/h per ip and 50/h per account"),
        ];
        assert!(check(&limiter, &classes, &subject(Some(1), "192.0.2.1")).is_ok());
        // Another user from the same address hits the per-ip limit of `strict`.
        let Err(LimitError::Exceeded(exceeded)) =
            check(&limiter, &classes, &subject(Some(2), "192.0.2.1"))
        else {
            panic!("the per-ip limit did not apply");
        };
        assert_eq!(&*exceeded.class, "strict");
        assert_eq!(&*exceeded.policy, "strict.1");
        assert_eq!(exceeded.key, "ip=192.0.2.1");
    }

    #[test]
    fn a_changed_class_starts_with_fresh_budgets_and_old_ones_are_dropped() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(clock.clone());
        let alice = subject(Some(1), "192.0.2.1");
        let old = [class("api", "1/h per user")];
        assert!(check(&limiter, &old, &alice).is_ok());
        assert!(check(&limiter, &old, &alice).is_err());
        let same = [class("api", "1/h per user")];
        assert!(
            check(&limiter, &same, &alice).is_err(),
            "an unchanged class keeps its budgets"
        );
        let new = [class("api", "2/h per user")];
        assert!(check(&limiter, &new, &alice).is_ok());
        assert_eq!(limiter.local.len(), 2);
        // governor keeps a key one emission interval past its refill.
        clock.advance(Duration::from_secs(2 * 3600));
        assert_eq!(limiter.housekeep(), 0);
        assert_eq!(limiter.local.len(), 0, "limits without keys are dropped");
    }

    #[test]
    fn class_names_and_several_limits_get_policy_names() {
        let login = class("login", "10/5min per ip and 5/15min per login");
        let names: Vec<&str> = login.limits.iter().map(|l| &*l.policy).collect();
        assert_eq!(names, ["login.1", "login.2"]);
        assert!(login.uses(Key::Login));
        assert!(!login.uses(Key::User));
        assert_ne!(login.limits[0].id, login.limits[1].id);
        assert!(is_class_name("api-v2.read_only"));
        assert!(!is_class_name("api v2") && !is_class_name(""));
    }
}
