//! Third stage of the flow: who is calling.
//!
//! [`Authenticator::identify`] turns the token in `Authorization` into an
//! [`Identity`] (user, account, user roles, account roles), or refuses, against the
//! configured directory: the gateway's own tables (`native`) or an existing
//! FlexMeasures database (`flexmeasures`). [`Authenticator::login`] answers
//! `POST /api/requestAuthToken` in the directory's token format.
//!
//! Everything that touches a store or burns CPU runs on the identity runtime (its own
//! threads), never on a proxy event loop.

mod blocking;
mod feed;
mod flexmeasures;
pub mod native;
pub mod password;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use blocking::{BlockingPool, PoolError};

use crate::config::{Config, DirectoryKind};
use crate::directory::{self, Directory, UserId};
use crate::metrics::Metrics;
use crate::rate_limit::lockout::Lockout;
use crate::secret::Secret;
use crate::store::{Cluster, Database, StoreError};
use crate::token::TokenError;

/// Verifies tokens and passwords against the configured directory.
pub enum Authenticator {
    Native(native::Native),
    FlexMeasures(flexmeasures::FlexMeasures),
}

impl Authenticator {
    /// Starts the identity runtime for the configured directory (migrations, change
    /// feed). `None` without a directory.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Arc<Self>>, StartError> {
        let kind = config.directory.as_ref().map(|d| d.kind);
        let started = match kind {
            None => None,
            Some(DirectoryKind::Native) => {
                native::Native::start(config, metrics)?.map(Self::Native)
            }
            Some(DirectoryKind::FlexMeasures) => {
                flexmeasures::FlexMeasures::start(config, metrics)?.map(Self::FlexMeasures)
            }
        };
        Ok(started.map(Arc::new))
    }

    /// Where `POST` logs in.
    pub fn login_path(&self) -> &str {
        match self {
            Self::Native(native) => native.login_path(),
            Self::FlexMeasures(flexmeasures) => flexmeasures.login_path(),
        }
    }

    /// The backend that answers logins itself, when the gateway passes them through.
    pub fn login_backend(&self) -> Option<&str> {
        match self {
            Self::Native(_) => None,
            Self::FlexMeasures(flexmeasures) => flexmeasures.login_backend(),
        }
    }

    /// Whether the directory's stores answer; for `/readyz`.
    pub async fn ready(&self) -> Result<(), StoreError> {
        match self {
            Self::Native(native) => native.ready().await,
            Self::FlexMeasures(flexmeasures) => flexmeasures.ready().await,
        }
    }

    /// Takes up to `limit` changes made with admin commands, for the audit stream
    /// (see [`crate::audit::AdminEvent`]). A FlexMeasures directory keeps them in its
    /// `state` database; without one there are none.
    pub async fn take_admin_events(
        &self,
        limit: i64,
    ) -> Result<Vec<crate::audit::AdminEvent>, StoreError> {
        let tables = match self {
            Self::Native(native) => Some(native.own_tables()),
            Self::FlexMeasures(flexmeasures) => flexmeasures.own_tables(),
        };
        let Some((handle, database)) = tables else {
            return Ok(Vec::new());
        };
        on_runtime(
            handle,
            async move { database.take_admin_events(limit).await },
        )
        .await
    }

    /// Runs a policy resource query (see `policy::rules::Resource`) where the
    /// directory's data is.
    pub async fn resolve(
        &self,
        query: Arc<str>,
        key: String,
    ) -> Result<Option<(Option<i64>, Option<i64>)>, StoreError> {
        match self {
            Self::Native(native) => native.resolve(query, key).await,
            Self::FlexMeasures(flexmeasures) => flexmeasures.resolve(query, key).await,
        }
    }

    /// Verifies the token in an `Authorization` header value.
    pub async fn identify(&self, authorization: &[u8]) -> Result<Verified, IdentityError> {
        match self {
            Self::Native(native) => native.identify(authorization).await,
            Self::FlexMeasures(flexmeasures) => flexmeasures.identify(authorization).await,
        }
    }

    /// Checks an email and password and issues a token.
    pub async fn login(&self, attempt: LoginAttempt) -> Result<Issued, LoginError> {
        match self {
            Self::Native(native) => native.login(attempt).await,
            Self::FlexMeasures(flexmeasures) => flexmeasures.login(attempt).await,
        }
    }

    /// The native directory, for the web login (configuration checks refuse
    /// `[web_login]` with another directory).
    pub fn native(&self) -> Option<&native::Native> {
        match self {
            Self::Native(native) => Some(native),
            Self::FlexMeasures(_) => None,
        }
    }

    /// The lockout in force for any of `keys`, if one is (see `rate_limit::lockout`).
    pub async fn lockout(&self, keys: Vec<String>) -> Result<Option<Lockout>, StoreError> {
        match self {
            Self::Native(native) => native.lockout(keys).await,
            Self::FlexMeasures(flexmeasures) => flexmeasures.lockout(keys).await,
        }
    }

    /// Records a lockout for every instance to see.
    pub async fn lock_out(&self, lockout: Lockout) -> Result<(), StoreError> {
        match self {
            Self::Native(native) => native.lock_out(lockout).await,
            Self::FlexMeasures(flexmeasures) => flexmeasures.lock_out(lockout).await,
        }
    }
}

/// Who is making a request, as far as the gateway has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential was presented.
    Anonymous,
    /// A verified user.
    User(Arc<Identity>),
}

/// A verified user as policies and backends see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub account_id: directory::AccountId,
    pub email: String,
    pub roles: Vec<String>,
    pub account_roles: Vec<String>,
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Missing, malformed, forged, expired, revoked, or the user is gone or inactive:
    /// one 401 for all, the kind is for the log.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// A store needed to verify is unreachable, or the password pool is full: 503.
    #[error("credentials cannot be checked: {0}")]
    Unavailable(String),
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("login body is not JSON with `email` and `password`")]
    Malformed,
    #[error("wrong email or password, or inactive user")]
    BadCredentials,
    #[error("login cannot be checked: {0}")]
    Unavailable(String),
}

/// The user behind a web-login session, for the session check (`login`).
#[derive(Debug, Clone)]
pub struct SessionHolder {
    pub identity: Arc<Identity>,
    pub active: bool,
    /// SHA-256 of the current password hash.
    pub fingerprint: [u8; 32],
    /// Sessions begun before this (Unix seconds) are over.
    pub sessions_not_before: i64,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Arc<Identity>,
    pub path: VerificationPath,
}

/// How a token was verified, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationPath {
    /// Its slow check had passed before (the hot path).
    Cached,
    /// Checked in full now, sha256_crypt included.
    Verified,
}

/// A login request's body: `{"email": …, "password": …}`.
#[derive(Debug, Deserialize)]
pub struct LoginAttempt {
    pub email: String,
    pub password: Secret<String>,
}

impl LoginAttempt {
    pub fn parse(body: &[u8]) -> Result<Self, LoginError> {
        serde_json::from_slice(body).map_err(|_| LoginError::Malformed)
    }
}

/// A freshly issued token.
#[derive(Debug)]
pub struct Issued {
    pub token: Secret<String>,
    pub user_id: UserId,
}

/// The identity runtime; shut down without blocking when dropped, so dropping it
/// from inside another runtime is safe.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

/// Runs store work on the identity runtime, so it never runs on a proxy event loop.
/// A task that died counts as a store that did not answer.
async fn on_runtime<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    handle
        .spawn(work)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

/// Starts the identity runtime: two workers for the database and the caches (the
/// password checks have threads of their own, see `blocking`).
fn start_runtime() -> Result<(OwnedRuntime, tokio::runtime::Handle), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("portcullis-identity")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let handle = runtime.handle().clone();
    Ok((OwnedRuntime(Some(runtime)), handle))
}

/// Applies migrations now, waiting at most `limit`; a database that is down is
/// retried in the background (see `feed`). Runs on a thread of its own: the caller
/// may be inside another runtime.
fn migrate_now(handle: &tokio::runtime::Handle, database: Database, limit: Duration) -> bool {
    let handle = handle.clone();
    let migrated = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                handle
                    .block_on(async move { tokio::time::timeout(limit, database.migrate()).await })
            })
            .join()
    });
    match migrated {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "directory migrations not applied yet; retrying in the background");
            false
        }
        _ => {
            tracing::warn!("directory migrations timed out; retrying in the background");
            false
        }
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the identity runtime: {0}")]
    Runtime(std::io::Error),
    #[error("directory: {0}")]
    Store(StoreError),
    #[error("the operating system's random source failed; no key for the token cache")]
    Random,
}

/// Opens the gateway's own tables a configuration names (for the gateway and the
/// admin CLI): the native directory, or with a FlexMeasures directory its `state`
/// database (lockouts only; its users tables stay empty).
pub fn open_directory(config: &Config) -> Result<Option<Directory>, StoreError> {
    let Some(settings) = &config.directory else {
        return Ok(None);
    };
    let url = match (settings.kind, &settings.state) {
        (DirectoryKind::Native, _) => &settings.database,
        (DirectoryKind::FlexMeasures, Some(state)) => state,
        (DirectoryKind::FlexMeasures, None) => {
            return Err(StoreError::BadUrl(
                "a FlexMeasures directory keeps the gateway's own state (lockouts) in `[directory] state`, which is not set".into(),
            ));
        }
    };
    let database = Database::connect(url.expose(), settings.max_connections, settings.timeout)?;
    let cluster = match &config.redis {
        Some(redis) => Some(Cluster::open(
            redis.url.expose(),
            &redis.prefix,
            redis.timeout,
        )?),
        None => None,
    };
    Ok(Some(Directory::new(
        database,
        cluster,
        config.tokens.max_age,
    )))
}

/// Why [`with_directory`] could not run its work.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryTaskError {
    #[error("the configuration has no [directory] section")]
    NoDirectory,
    #[error("cannot prepare the directory: {0}")]
    Failed(String),
}

/// For commands outside the gateway (admin CLI, policy tools, demo): opens the
/// configured directory on a runtime of its own, applies migrations, runs `work` and
/// closes the pool.
pub fn with_directory<T>(
    config: &Config,
    work: impl AsyncFnOnce(&Directory) -> T,
) -> Result<T, DirectoryTaskError> {
    let failed = |e: &dyn std::fmt::Display| DirectoryTaskError::Failed(e.to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(&e))?;
    runtime.block_on(async {
        let directory = open_directory(config)
            .map_err(|e| failed(&e))?
            .ok_or(DirectoryTaskError::NoDirectory)?;
        directory
            .database()
            .migrate()
            .await
            .map_err(|e| failed(&e))?;
        let outcome = work(&directory).await;
        directory.database().close().await;
        Ok(outcome)
    })
}

impl TokenError {
    /// A short name for logs and audit records.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Malformed => "malformed token",
            Self::BadSignature => "bad token signature",
            Self::Expired => "token expired",
            Self::FromTheFuture => "token from the future",
        }
    }
}
