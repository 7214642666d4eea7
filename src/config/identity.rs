//! The `[directory]`, `[tokens]`, `[redis]` and `[identity_headers]` sections: where
//! users live, how tokens are signed and for how long they hold, what instances
//! share, and how backends can verify identity headers.

use std::time::Duration;

use super::diagnostic::Problem;
use super::{Check, raw};
use crate::secret::{Secret, SecretSource};

/// Six hours, the seeds' `SECURITY_TOKEN_MAX_AGE` default (DESIGN §3).
pub const DEFAULT_TOKEN_MAX_AGE: Duration = Duration::from_secs(21_600);
/// How far in the future a token's timestamp may be (another instance's clock).
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);
pub const DEFAULT_LOGIN_PATH: &str = "/api/requestAuthToken";

/// Where users live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryKind {
    /// The gateway's own tables.
    Native,
    /// An existing FlexMeasures database, read only (see `[flexmeasures]`).
    FlexMeasures,
}

/// How the password threads (bcrypt, sha256_crypt) are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordPriority {
    /// Below every other thread (Linux `SCHED_IDLE`): hashing uses the CPU proxied
    /// traffic leaves, so a login storm does not slow proxied requests.
    #[default]
    Background,
    /// Like every other thread: logins compete with proxied traffic for the CPU.
    Normal,
}

#[derive(Debug, Clone)]
pub struct DirectorySettings {
    pub kind: DirectoryKind,
    /// `sqlite:PATH` (absolute) or `postgres://…`; may hold a password, never log it.
    /// With `kind = "flexmeasures"`, FlexMeasures' PostgreSQL database.
    pub database: Secret<String>,
    /// The gateway's own tables (login lockouts): `database` for the native kind, the
    /// optional `state` for FlexMeasures.
    pub state: Option<Secret<String>>,
    pub max_connections: u32,
    /// Connect, acquire and query timeout; beyond it requests get 503.
    pub timeout: Duration,
    /// How often the change feed is polled.
    pub change_poll: Duration,
    /// How long a user stays cached when no change says otherwise.
    pub cache_ttl: Duration,
    pub bcrypt_cost: u32,
    /// Password hashes verified at once; more wait in a queue.
    pub password_workers: usize,
    /// Waiting verifications beyond which logins get 503 at once.
    pub password_queue: usize,
    /// How the hashing threads are scheduled against proxied traffic.
    pub password_priority: PasswordPriority,
    /// Where `POST` issues tokens; served on every host.
    pub login_path: String,
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The first signs new tokens; all verify (rotation). Empty without a directory.
    pub secrets: Vec<(SecretSource, Secret<Vec<u8>>)>,
    pub max_age: Duration,
    pub clock_skew: Duration,
    pub cache_capacity: u64,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// May hold a password, never log it.
    pub url: Secret<String>,
    /// Starts every key and channel name, so deployments can share a Redis.
    pub prefix: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct IdentityHeaderSettings {
    /// When set, identity headers carry an HMAC-SHA256 signature backends can check.
    pub signing_secret: Option<Secret<Vec<u8>>>,
}

impl Check<'_> {
    pub(super) fn secret(
        &mut self,
        text: &toml::Spanned<String>,
        key: &str,
    ) -> Option<(SecretSource, Secret<Vec<u8>>)> {
        let parsed = SecretSource::parse(text.get_ref(), &self.base).and_then(|source| {
            let secret = source.read()?;
            Ok((source, secret))
        });
        match parsed {
            Ok(pair) => Some(pair),
            Err(error) => {
                self.error(
                    Problem::error(format!("`{key}`: {error}"))
                        .at(text.span())
                        .help("write `env:NAME` or `file:PATH` holding at least 32 random bytes, e.g. from `openssl rand -base64 48`; secrets never go into the file itself"),
                );
                None
            }
        }
    }

    /// `directory`: where the `[directory]` header is, when there is one (tokens then
    /// need a secret).
    pub(super) fn tokens(
        &mut self,
        raw: raw::Tokens,
        directory: Option<std::ops::Range<usize>>,
    ) -> TokenSettings {
        let max_age = self.duration(
            raw.max_age,
            DEFAULT_TOKEN_MAX_AGE,
            Duration::from_secs(1)..Duration::from_secs(366 * 24 * 3600),
            "max_age",
        );
        let clock_skew = self.duration(
            raw.clock_skew,
            DEFAULT_CLOCK_SKEW,
            Duration::from_secs(1)..Duration::from_secs(3601),
            "clock_skew",
        );
        let cache_capacity = self.count(raw.cache_capacity, 100_000, 100_000_000, "cache_capacity");
        let mut secrets = Vec::new();
        match raw.secrets {
            Some(list) => {
                let span = list.span();
                for text in list.into_inner().0 {
                    let text = toml::Spanned::new(span.clone(), text);
                    secrets.extend(self.secret(&text, "secrets"));
                }
            }
            None if directory.is_some() => self.error(
                Problem::error("tokens need a signing secret: `[tokens] secrets` is missing")
                    .at_opt(directory)
                    .help("add `[tokens]` with `secrets = [\"env:PORTCULLIS_TOKEN_SECRET\"]` (or `file:PATH`); the first signs, all verify"),
            ),
            None => {}
        }
        TokenSettings {
            secrets,
            max_age,
            clock_skew,
            cache_capacity: u64::try_from(cache_capacity).unwrap_or(u64::MAX),
        }
    }

    pub(super) fn directory(
        &mut self,
        raw: raw::Directory,
        span: Option<std::ops::Range<usize>>,
    ) -> Option<DirectorySettings> {
        let kind = self
            .keyword(
                raw.kind.as_ref(),
                &[
                    ("native", DirectoryKind::Native),
                    ("flexmeasures", DirectoryKind::FlexMeasures),
                ],
                DirectoryKind::Native,
                "directory kind",
                "use `native` (the gateway's own tables) or `flexmeasures` (an existing FlexMeasures database)",
            )
            .unwrap_or(DirectoryKind::Native);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let max_connections = self.count(raw.max_connections, 8, 1000, "max_connections");
        let timeout = self.duration(
            raw.timeout,
            Duration::from_secs(3),
            Duration::from_millis(10)..Duration::from_secs(301),
            "timeout",
        );
        let change_poll = self.duration(
            raw.change_poll,
            Duration::from_millis(250),
            Duration::from_millis(10)..Duration::from_secs(61),
            "change_poll",
        );
        // FlexMeasures says nothing when a user changes: its users are looked up again
        // sooner.
        let cache_ttl = self.duration(
            raw.cache_ttl,
            match kind {
                DirectoryKind::Native => Duration::from_secs(300),
                DirectoryKind::FlexMeasures => Duration::from_secs(30),
            },
            Duration::from_secs(1)..Duration::from_secs(24 * 3600 + 1),
            "cache_ttl",
        );
        let password_workers = self.count(raw.password_workers, cpus, 1024, "password_workers");
        let password_queue = self.count(raw.password_queue, 64, 100_000, "password_queue");
        let password_priority = self
            .keyword(
                raw.password_priority.as_ref(),
                &[
                    ("background", PasswordPriority::Background),
                    ("normal", PasswordPriority::Normal),
                ],
                PasswordPriority::default(),
                "password_priority",
                "use `background` (password checks use the CPU proxied traffic leaves) or `normal`",
            )
            .unwrap_or_default();
        let bcrypt_cost = match raw.bcrypt_cost {
            None => 12,
            Some(cost) => match u32::try_from(*cost.get_ref()) {
                Ok(n @ 4..=31) => n,
                _ => {
                    self.error(
                        Problem::error("`bcrypt_cost` must be from 4 to 31")
                            .at(cost.span())
                            .help("12 takes about 250 ms per login on a current core; raise it as hardware gets faster"),
                    );
                    12
                }
            },
        };
        let login_path = match raw.login_path {
            None => DEFAULT_LOGIN_PATH.to_owned(),
            Some(path) => {
                let normalized = crate::route::normalize_prefix(path.get_ref());
                match normalized {
                    Some(p) if p != "/" => p,
                    _ => {
                        self.error(
                            Problem::error("`login_path` must be an absolute path like \"/api/requestAuthToken\"")
                                .at(path.span()),
                        );
                        DEFAULT_LOGIN_PATH.to_owned()
                    }
                }
            }
        };
        let Some(database) = raw.database else {
            self.error(
                Problem::error("`[directory]` needs `database`")
                    .at_opt(span)
                    .help("`database = \"sqlite:portcullis.db\"` for one instance, `postgres://…` for several (put the password in PORTCULLIS__DIRECTORY__DATABASE)"),
            );
            return None;
        };
        let state = match (&raw.state, kind) {
            (None, _) => None,
            (Some(state), DirectoryKind::Native) => {
                self.error(
                    Problem::error("`state` is for `kind = \"flexmeasures\"`; the native directory keeps its state in `database`")
                        .at(state.span()),
                );
                None
            }
            (Some(state), DirectoryKind::FlexMeasures) => self.database_url(state).map(Secret::new),
        };
        if kind == DirectoryKind::FlexMeasures
            && !(database.get_ref().starts_with("postgres://")
                || database.get_ref().starts_with("postgresql://"))
        {
            self.error(
                Problem::error("a FlexMeasures directory is FlexMeasures' PostgreSQL database")
                    .at(database.span())
                    .help("`database = \"postgres://portcullis@db/flexmeasures\"` (a read-only role is enough); the password goes in PORTCULLIS__DIRECTORY__DATABASE"),
            );
            return None;
        }
        let database = self.database_url(&database)?;
        Some(DirectorySettings {
            kind,
            database: Secret::new(database),
            state,
            max_connections: u32::try_from(max_connections).unwrap_or(8),
            timeout,
            change_poll,
            cache_ttl,
            bcrypt_cost,
            password_workers,
            password_queue,
            password_priority,
            login_path,
        })
    }

    /// `sqlite:PATH` (made absolute) or `postgres://…`.
    fn database_url(&mut self, database: &toml::Spanned<String>) -> Option<String> {
        let url = database.get_ref();
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() || path.contains('?') {
                self.error(
                    Problem::error("`database` must name a SQLite file: `sqlite:PATH`")
                        .at(database.span()),
                );
                return None;
            }
            let file = self.path(path);
            if let Some(dir) = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                self.error(
                    Problem::warning(format!(
                        "the directory `{}` of the SQLite database does not exist",
                        dir.display()
                    ))
                    .at(database.span())
                    .help("create it, writable by the gateway's user (systemd: StateDirectory=)"),
                );
            }
            Some(format!("sqlite:{}", file.display()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(url.clone())
        } else {
            self.error(
                Problem::error("`database` must start with `sqlite:` or `postgres://`")
                    .at(database.span())
                    .label("unknown engine"),
            );
            None
        }
    }

    pub(super) fn redis(
        &mut self,
        raw: raw::Redis,
        span: Option<std::ops::Range<usize>>,
    ) -> Option<RedisSettings> {
        let timeout = self.duration(
            raw.timeout,
            Duration::from_millis(500),
            Duration::from_millis(10)..Duration::from_secs(61),
            "timeout",
        );
        let prefix = match raw.prefix {
            None => "portcullis".to_owned(),
            Some(prefix) => {
                let valid = !prefix.get_ref().is_empty()
                    && prefix.get_ref().len() <= 64
                    && prefix
                        .get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
                if !valid {
                    self.error(
                        Problem::error(
                            "`prefix` must be 1 to 64 letters, digits, `-`, `_`, `.` or `:`",
                        )
                        .at(prefix.span()),
                    );
                }
                prefix.into_inner()
            }
        };
        let Some(url) = raw.url else {
            self.error(Problem::error("`[redis]` needs `url`").at_opt(span).help(
                "`url = \"redis://127.0.0.1:6379\"`; put a password in PORTCULLIS__REDIS__URL",
            ));
            return None;
        };
        if !(url.get_ref().starts_with("redis://")) {
            self.error(
                Problem::error("`url` must start with `redis://`")
                    .at(url.span())
                    .label("not a Redis URL"),
            );
            return None;
        }
        Some(RedisSettings {
            url: Secret::new(url.into_inner()),
            prefix,
            timeout,
        })
    }

    pub(super) fn identity_headers(&mut self, raw: raw::IdentityHeaders) -> IdentityHeaderSettings {
        IdentityHeaderSettings {
            signing_secret: raw
                .signing_secret
                .and_then(|text| self.secret(&text, "signing_secret"))
                .map(|(_, secret)| secret),
        }
    }
}
