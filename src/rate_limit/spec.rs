//! Limit specifications as operators write them: `"500/min per user"`,
//! `"10/5min per ip and 5/15min per login"`, `"100/10s burst 20 per user+route"`.
//!
//! ```text
//! class := limit ("and" limit)*
//! limit := COUNT "/" [N]UNIT ["burst" B] "per" key ("+" key)*
//! key   := ip | user | account | route | login
//! ```
//!
//! A limit of COUNT per period is a GCRA with one request every period/COUNT and a
//! burst of COUNT (or B): COUNT requests may come at once, then one per period/COUNT.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// What a limit counts separately: one budget per distinct value of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Keys(u8);

/// One part of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The client address (IPv6 by its /64 by default), after trusted proxies.
    Ip,
    /// The verified user; anonymous callers are counted by their address.
    User,
    /// The verified user's account; anonymous callers are counted by their address.
    Account,
    /// The rule (route id) the request matched.
    Route,
    /// The login name submitted to a login endpoint, whether or not it exists.
    Login,
}

impl Key {
    pub const ALL: [Key; 5] = [Key::Ip, Key::User, Key::Account, Key::Route, Key::Login];
    pub const NAMES: &'static [&'static str] = &["ip", "user", "account", "route", "login"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::User => "user",
            Self::Account => "account",
            Self::Route => "route",
            Self::Login => "login",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Ip => 1,
            Self::User => 2,
            Self::Account => 4,
            Self::Route => 8,
            Self::Login => 16,
        }
    }
}

impl Keys {
    pub fn contains(self, key: Key) -> bool {
        self.0 & key.bit() != 0
    }

    fn insert(&mut self, key: Key) -> bool {
        let new = !self.contains(key);
        self.0 |= key.bit();
        new
    }

    /// The keys in a fixed order (the order key strings are built in).
    pub fn iter(self) -> impl Iterator<Item = Key> {
        Key::ALL
            .into_iter()
            .filter(move |key| self.contains(key.to_owned()))
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Key::name).collect();
        f.write_str(&names.join("+"))
    }
}

/// One limit: `count` per `period`, a burst of `burst`, counted per `keys`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    pub count: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
    pub keys: Keys,
}

impl Limit {
    /// Time between two requests at the sustained rate (GCRA's emission interval).
    pub fn interval(&self) -> Duration {
        self.period / self.count.get()
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        write!(f, " per {}", self.keys)
    }
}

/// Why a limit specification is not valid; shown with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("a limit is `COUNT/PERIOD per KEY`, like `500/min per user`; `{0}` is not")]
    Shape(String),
    #[error("`{0}` is not a whole number from 1 to 1000000")]
    Count(String),
    #[error("`{0}` is not a period such as `s`, `min`, `5min`, `h` or `day`")]
    Period(String),
    #[error("the period must be between 1 second and 7 days, not `{0}`")]
    PeriodRange(String),
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    #[error("key `{0}` is named twice")]
    DuplicateKey(String),
    #[error("the specification is empty")]
    Empty,
}

const MAX_COUNT: u32 = 1_000_000;
const MIN_PERIOD: Duration = Duration::from_secs(1);
const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a class: one or more limits joined by `and`.
pub fn parse(text: &str) -> Result<Vec<Limit>, SpecError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err(SpecError::Empty);
    }
    words
        .split(|word| *word == "and")
        .map(|limit| parse_limit(limit, text))
        .collect()
}

fn parse_limit(words: &[&str], whole: &str) -> Result<Limit, SpecError> {
    let shape = || SpecError::Shape(whole.trim().to_owned());
    let (rate, rest) = words.split_first().ok_or_else(shape)?;
    let (count, period) = rate.split_once('/').ok_or_else(shape)?;
    let count = number(count)?;
    let period = period_of(period)?;
    let (burst, rest) = match rest {
        ["burst", burst, rest @ ..] => (number(burst)?, rest),
        _ => (count, rest),
    };
    let keys = match rest {
        ["per", keys] => keys_of(keys)?,
        _ => return Err(shape()),
    };
    if period.checked_div(count.get()).is_none_or(|i| i.is_zero()) {
        return Err(SpecError::Count(count.to_string()));
    }
    Ok(Limit {
        count,
        period,
        burst,
        keys,
    })
}

fn number(text: &str) -> Result<NonZeroU32, SpecError> {
    text.parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_COUNT)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| SpecError::Count(text.to_owned()))
}

fn period_of(text: &str) -> Result<Duration, SpecError> {
    // `min` means one minute; `5min` five.
    let with_number = if text.starts_with(|c: char| c.is_ascii_digit()) {
        text.to_owned()
    } else {
        format!("1{text}")
    };
    let period =
        humantime::parse_duration(&with_number).map_err(|_| SpecError::Period(text.to_owned()))?;
    if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
        return Err(SpecError::PeriodRange(text.to_owned()));
    }
    Ok(period)
}

fn keys_of(text: &str) -> Result<Keys, SpecError> {
    let mut keys = Keys::default();
    for name in text.split('+') {
        let key = Key::ALL
            .into_iter()
            .find(|key| key.name() == name)
            .ok_or_else(|| SpecError::UnknownKey(name.to_owned()))?;
        if !keys.insert(key) {
            return Err(SpecError::DuplicateKey(name.to_owned()));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Limit {
        let mut limits = parse(text).expect("valid");
        assert_eq!(limits.len(), 1);
        limits.remove(0)
    }

    #[test]
    fn a_rate_per_key_is_a_count_a_period_and_keys() {
        let limit = one("500/min per user");
        assert_eq!(limit.count.get(), 500);
        assert_eq!(limit.period, Duration::from_secs(60));
        assert_eq!(limit.burst.get(), 500);
        assert!(limit.keys.contains(Key::User));
        assert!(!limit.keys.contains(Key::Ip));
        assert_eq!(limit.interval(), Duration::from_millis(120));
        assert_eq!(limit.to_string(), "500/1m per user");
    }

    #[test]
    fn periods_may_have_a_multiplier_and_limits_may_be_joined() {
        let limits = parse("10/5min per ip and 5/15min per login").expect("valid");
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].period, Duration::from_secs(300));
        assert_eq!(limits[1].period, Duration::from_secs(900));
        assert!(limits[1].keys.contains(Key::Login));
        assert_eq!(one("3/h per ip").period, Duration::from_secs(3600));
        assert_eq!(one("3/day per ip").period, Duration::from_secs(86_400));
        assert_eq!(one("3/10s per ip").period, Duration::from_secs(10));
    }

    #[test]
    fn keys_combine_and_a_burst_may_differ_from_the_count() {
        let limit = one("100/10s burst 20 per user+route");
        assert_eq!(limit.burst.get(), 20);
        assert_eq!(limit.keys.to_string(), "user+route");
        assert_eq!(limit.to_string(), "100/10s burst 20 per user+route");
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse(""), Err(SpecError::Empty));
        assert!(matches!(parse("500 per user"), Err(SpecError::Shape(_))));
        assert!(matches!(parse("500/min"), Err(SpecError::Shape(_))));
        assert!(
            matches!(parse("500/min per users"), Err(SpecError::UnknownKey(k)) if k == "users")
        );
        assert!(matches!(parse("0/min per ip"), Err(SpecError::Count(_))));
        assert!(matches!(parse("x/min per ip"), Err(SpecError::Count(_))));
        assert!(matches!(
            parse("5/fortnight per ip"),
            Err(SpecError::Period(_))
        ));
        assert!(matches!(
            parse("5/100ms per ip"),
            Err(SpecError::PeriodRange(_))
        ));
        assert!(matches!(
            parse("5/30d per ip"),
            Err(SpecError::PeriodRange(_))
        ));
        assert!(matches!(
            parse("5/min per ip+ip"),
            Err(SpecError::DuplicateKey(_))
        ));
        assert!(matches!(
            parse("5/min per ip and"),
            Err(SpecError::Shape(_))
        ));
        assert!(matches!(
            parse("5/min burst 0 per ip"),
            Err(SpecError::Count(_))
        ));
    }
}
