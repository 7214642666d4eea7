//! The configuration file as written: serde structs with spans, no meaning yet.
//!
//! Every struct refuses unknown keys. Each value that a later check may reject is
//! `Spanned`, so the check can point at it. Conversion into the typed [`super::Config`]
//! happens in `config.rs`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// Top-level sections, for "unknown section" hints.
pub const SECTIONS: &[&str] = &[
    "listen",
    "tls",
    "hsts",
    "server",
    "log",
    "admin",
    "audit",
    "directory",
    "flexmeasures",
    "tokens",
    "redis",
    "identity_headers",
    "policies",
    "rate_limits",
    "web_login",
    "mail",
    "backends",
    "route",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub https: Option<Spanned<StringList>>,
    pub http: Option<Spanned<StringList>>,
    pub redirect_port: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub certificate: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub expiry_warning: Option<Spanned<DurationText>>,
    pub reload_interval: Option<Spanned<DurationText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    pub max_age: Option<Spanned<DurationText>>,
    pub include_subdomains: Option<bool>,
    pub preload: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub threads: Option<Spanned<i64>>,
    pub grace_period: Option<Spanned<DurationText>>,
    pub shutdown_timeout: Option<Spanned<DurationText>>,
    pub trusted_proxies: Option<Spanned<StringList>>,
    pub keepalive_pool_size: Option<Spanned<i64>>,
    pub client_idle_timeout: Option<Spanned<DurationText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: Option<Spanned<String>>,
    pub level: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub path: Option<Spanned<String>>,
    pub capacity: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub kind: Option<Spanned<String>>,
    pub database: Option<Spanned<String>>,
    pub state: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub timeout: Option<Spanned<DurationText>>,
    pub change_poll: Option<Spanned<DurationText>>,
    pub cache_ttl: Option<Spanned<DurationText>>,
    pub bcrypt_cost: Option<Spanned<i64>>,
    pub password_workers: Option<Spanned<i64>>,
    pub password_queue: Option<Spanned<i64>>,
    pub password_priority: Option<Spanned<String>>,
    pub login_path: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebLogin {
    pub path: Option<Spanned<String>>,
    pub logout_path: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub title: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<DurationText>>,
    pub absolute_timeout: Option<Spanned<DurationText>>,
    pub max_sessions: Option<Spanned<i64>>,
    pub code_lifetime: Option<Spanned<DurationText>>,
    pub code_attempts: Option<Spanned<i64>>,
    pub totp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mail {
    pub from: Option<Spanned<String>>,
    pub outbox: Option<Spanned<String>>,
    pub smtp_host: Option<Spanned<String>>,
    pub smtp_port: Option<Spanned<i64>>,
    pub smtp_tls: Option<Spanned<String>>,
    pub smtp_username: Option<Spanned<String>>,
    pub smtp_password: Option<Spanned<String>>,
    pub timeout: Option<Spanned<DurationText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexMeasures {
    pub secret_key: Option<Spanned<String>>,
    pub secret_key_fallbacks: Option<Spanned<StringList>>,
    pub password_salt: Option<Spanned<String>>,
    pub token_salt: Option<Spanned<String>>,
    pub login: Option<Spanned<String>>,
    pub login_backend: Option<Spanned<String>>,
    pub auth_token_in_request: Option<Spanned<String>>,
    pub max_json_body: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub secrets: Option<Spanned<StringList>>,
    pub max_age: Option<Spanned<DurationText>>,
    pub clock_skew: Option<Spanned<DurationText>>,
    pub cache_capacity: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<DurationText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    pub dir: Option<Spanned<String>>,
    pub reload_interval: Option<Spanned<DurationText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub store: Option<Spanned<String>>,
    pub on_store_error: Option<Spanned<String>>,
    pub max_keys: Option<Spanned<i64>>,
    pub housekeeping_interval: Option<Spanned<DurationText>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
    pub default: Option<Spanned<StringList>>,
    pub login: Option<Spanned<String>>,
    pub login_failures: Option<Spanned<String>>,
    pub second_factor: Option<Spanned<String>>,
    pub lockout: Option<Spanned<DurationText>>,
    pub classes: Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    pub signing_secret: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Spanned<StringList>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: Option<Spanned<String>>,
    pub tls: Option<bool>,
    pub sni: Option<Spanned<String>>,
    pub verify_certificate: Option<bool>,
    pub ca: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<DurationText>>,
    pub read_timeout: Option<Spanned<DurationText>>,
    pub write_timeout: Option<Spanned<DurationText>>,
    pub idle_timeout: Option<Spanned<DurationText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: Spanned<String>,
    #[serde(default = "any_host")]
    pub host: Spanned<String>,
    pub path_prefix: Spanned<String>,
    pub backend: Spanned<String>,
    pub auth: Spanned<String>,
    pub mfa: Option<Spanned<bool>>,
    pub rate_limit: Option<Spanned<StringList>>,
}

fn any_host() -> Spanned<String> {
    Spanned::new(0..0, "*".to_owned())
}

/// A string or a list of strings: `"a"` and `["a", "b"]` both work, which keeps
/// environment overrides short (`PORTCULLIS__LISTEN__HTTPS=0.0.0.0:443`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<StringList, E> {
                Ok(StringList(vec![value.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(StringList(items))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// A duration as text (`"10s"`, `"5m"`, `"30d"`) or whole seconds; parsed later so an
/// invalid one is reported with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationText {
    Text(String),
    Seconds(i64),
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"5m\" or \"30d\", or whole seconds")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<DurationText, E> {
                Ok(DurationText::Text(value.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<DurationText, E> {
                Ok(DurationText::Seconds(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<DurationText, E> {
                i64::try_from(value)
                    .map(DurationText::Seconds)
                    .map_err(|_| E::custom("duration is too large"))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// The keys a raw section accepts, read from its `Deserialize` impl, so the example
/// configuration can be checked for completeness.
pub fn keys_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let keys = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(KeyProbe(&keys));
    keys.get()
}

struct KeyProbe<'a>(&'a std::cell::Cell<&'static [&'static str]>);

impl<'de> Deserializer<'de> for KeyProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(de::Error::custom("probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}
