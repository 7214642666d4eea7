//! Identities from an existing FlexMeasures server: the tokens it issues
//! (Flask-Security, see `token::flask_security`), checked against its database, read
//! only (DESIGN §2–3).
//!
//! Validation: signature with `SECRET_KEY` or a fallback (constant time) → age and
//! `exp` → the user with that `fs_uniquifier` exists and is active (→ for v3 tokens,
//! has the id the token names). Tokens are cheap to check (HMAC-SHA1); users are
//! cached for `[directory] cache_ttl`, so a user deactivated in FlexMeasures (or
//! whose `fs_uniquifier` FlexMeasures changed, which ends their tokens) is refused
//! within that time.
//!
//! Logins are answered here with FlexMeasures' password check (HMAC-SHA512 pre-hash,
//! then bcrypt or argon2), issuing a token FlexMeasures itself accepts, unless
//! `[flexmeasures] login = "pass-through"`. Lockouts live in `[directory] state`.

use std::sync::Arc;

use moka::sync::Cache;

use super::blocking::BlockingPool;
use super::{
    Identity, IdentityError, Issued, LoginAttempt, LoginError, OwnedRuntime, StartError,
    VerificationPath, Verified, migrate_now, on_runtime, password, start_runtime,
};
use crate::config::{Config, FlexMeasuresLogin};
use crate::metrics::Metrics;
use crate::rate_limit::lockout::Lockout;
use crate::secret::Secret;
use crate::store::{Database, FlexMeasuresDatabase, FlexMeasuresUser, StoreError};
use crate::token::flask_security::{self, FlaskSecurityKeys, PasswordCheck};

/// Passlib's bcrypt default, FlexMeasures' cost: unknown users cost as much.
const DUMMY_BCRYPT_COST: u32 = 12;

/// Verifies FlexMeasures tokens and passwords against FlexMeasures' database.
pub struct FlexMeasures {
    runtime: OwnedRuntime,
    handle: tokio::runtime::Handle,
    database: FlexMeasuresDatabase,
    /// The gateway's own tables (lockouts), when `[directory] state` is set.
    state: Option<Database>,
    keys: FlaskSecurityKeys,
    password_salt: Secret<Vec<u8>>,
    users: Cache<String, Arc<CachedUser>, foldhash::fast::RandomState>,
    pool: BlockingPool,
    dummy_hash: Arc<str>,
    login_path: String,
    /// The backend that answers logins, with `login = "pass-through"`.
    login_backend: Option<Arc<str>>,
    metrics: Arc<Metrics>,
}

impl FlexMeasures {
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Self>, StartError> {
        let (Some(settings), Some(flexmeasures)) = (&config.directory, &config.flexmeasures) else {
            return Ok(None);
        };
        let Some(keys) = FlaskSecurityKeys::new(
            &flexmeasures.secret_keys,
            &flexmeasures.token_salt,
            config.tokens.max_age,
            config.tokens.clock_skew,
        ) else {
            return Ok(None);
        };
        let (runtime, handle) = start_runtime()?;
        let (database, state) = {
            let _guard = handle.enter();
            let database = FlexMeasuresDatabase::connect(
                settings.database.expose(),
                settings.max_connections,
                settings.timeout,
            )
            .map_err(StartError::Store)?;
            let state = match &settings.state {
                Some(url) => Some(
                    Database::connect(url.expose(), settings.max_connections, settings.timeout)
                        .map_err(StartError::Store)?,
                ),
                None => None,
            };
            (database, state)
        };
        if let Some(state) = &state {
            migrate_now(&handle, state.clone(), settings.timeout * 10);
        }
        let pool = BlockingPool::new(
            settings.password_workers,
            settings.password_queue,
            settings.password_priority,
        )
        .map_err(StartError::Runtime)?;
        Ok(Some(Self {
            runtime,
            pool,
            handle,
            database,
            state,
            keys,
            password_salt: flexmeasures.password_salt.clone(),
            users: Cache::builder()
                .max_capacity(config.tokens.cache_capacity)
                .time_to_live(settings.cache_ttl)
                // Keys are uniquifiers from tokens whose signature passed, not
                // chosen by clients: foldhash, as for the native caches.
                .build_with_hasher(foldhash::fast::RandomState::default()),
            dummy_hash: password::dummy_hash(DUMMY_BCRYPT_COST).into(),
            login_path: settings.login_path.clone(),
            login_backend: match flexmeasures.login {
                FlexMeasuresLogin::Gateway => None,
                FlexMeasuresLogin::PassThrough => flexmeasures
                    .login_backend
                    .as_ref()
                    .map(|name| name.get_ref().as_str().into()),
            },
            metrics,
        }))
    }

    pub fn login_path(&self) -> &str {
        &self.login_path
    }

    pub fn login_backend(&self) -> Option<&str> {
        self.login_backend.as_deref()
    }

    pub async fn ready(&self) -> Result<(), StoreError> {
        let database = self.database.clone();
        let state = self.state.clone();
        on_runtime(&self.handle, async move {
            database.database().ping().await?;
            if let Some(state) = state {
                state.ping().await?;
            }
            Ok(())
        })
        .await
    }

    /// The gateway's own tables (`[directory] state`, if set) and the runtime to use
    /// them on.
    pub(super) fn own_tables(&self) -> Option<(&tokio::runtime::Handle, Database)> {
        self.state.clone().map(|state| (&self.handle, state))
    }

    /// Policy resources are FlexMeasures' assets and sensors: looked up there.
    pub async fn resolve(
        &self,
        query: Arc<str>,
        key: String,
    ) -> Result<Option<(Option<i64>, Option<i64>)>, StoreError> {
        let database = self.database.clone();
        on_runtime(&self.handle, async move {
            database.database().resolve(&query, &key).await
        })
        .await
    }

    pub async fn identify(&self, authorization: &[u8]) -> Result<Verified, IdentityError> {
        let token = crate::token::from_authorization(authorization)
            .ok_or(IdentityError::Invalid("no usable token in Authorization"))?;
        let claims = self
            .keys
            .decode(token, crate::directory::now())
            .map_err(|e| IdentityError::Invalid(e.kind()))?;
        let (cached, path) = match self.users.get(&claims.uniquifier) {
            Some(cached) => (cached, VerificationPath::Cached),
            None => {
                let database = self.database.clone();
                let uniquifier = claims.uniquifier.clone();
                // Boxed: the database read's future would otherwise be part of
                // every cached check's.
                let user = Box::pin(on_runtime(&self.handle, async move {
                    database.user_by_uniquifier(&uniquifier).await
                }))
                .await
                .map_err(|e| IdentityError::Unavailable(e.to_string()))?
                .ok_or(IdentityError::Invalid("unknown user"))?;
                let cached = Arc::new(CachedUser {
                    identity: Arc::new(identity(&user)),
                    user,
                });
                self.users.insert(claims.uniquifier.clone(), cached.clone());
                (cached, VerificationPath::Verified)
            }
        };
        let user = &cached.user;
        if !user.active {
            return Err(IdentityError::Invalid("user inactive"));
        }
        if claims.user_id.is_some_and(|id| id != user.id) {
            return Err(IdentityError::Invalid("token names another user"));
        }
        Ok(Verified {
            identity: cached.identity.clone(),
            path,
        })
    }

    pub async fn lockout(&self, keys: Vec<String>) -> Result<Option<Lockout>, StoreError> {
        let Some(state) = self.state.clone() else {
            return Ok(None);
        };
        on_runtime(&self.handle, async move {
            state.lockout(&keys, crate::directory::now()).await
        })
        .await
    }

    pub async fn lock_out(&self, lockout: Lockout) -> Result<(), StoreError> {
        let Some(state) = self.state.clone() else {
            return Err(StoreError::Unavailable(
                "no `[directory] state` to keep lockouts in".into(),
            ));
        };
        on_runtime(&self.handle, async move { state.lock_out(&lockout).await }).await
    }

    /// FlexMeasures' password check, then a token FlexMeasures accepts.
    pub async fn login(&self, attempt: LoginAttempt) -> Result<Issued, LoginError> {
        let database = self.database.clone();
        let email = attempt.email;
        let user = on_runtime(
            &self.handle,
            async move { database.user_by_email(&email).await },
        )
        .await
        .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let dummy = self.dummy_hash.clone();
        let salt = self.password_salt.clone();
        let password = attempt.password;
        let metrics = self.metrics.clone();
        // SECURITY: unknown users cost one bcrypt run like everyone else and get the
        // same answer as a wrong password; unknown hash formats never match.
        let check = self
            .pool
            .run(move || {
                let stored = stored.as_ref().map_or(&*dummy, |s| s.expose().as_str());
                metrics.password_check();
                flask_security::verify_password(&password, stored, salt.expose())
            })
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let Some(user) = user else {
            return Err(LoginError::BadCredentials);
        };
        match check {
            PasswordCheck::Matches if user.active => {}
            PasswordCheck::UnknownFormat => {
                tracing::warn!(
                    user = user.id,
                    "the user's FlexMeasures password hash is neither bcrypt nor argon2; login refused"
                );
                return Err(LoginError::BadCredentials);
            }
            _ => return Err(LoginError::BadCredentials),
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(Issued {
            token: Secret::new(self.keys.issue(&user.uniquifier, now)),
            user_id: user.id,
        })
    }
}

impl Drop for FlexMeasures {
    fn drop(&mut self) {
        // The runtime field shuts down in the background; nothing else to release.
        let _ = &self.runtime;
    }
}

/// A FlexMeasures user as cached for token checks, with the identity requests carry
/// (built once, not per request).
struct CachedUser {
    user: FlexMeasuresUser,
    identity: Arc<Identity>,
}

fn identity(user: &FlexMeasuresUser) -> Identity {
    Identity {
        user_id: user.id,
        account_id: user.account_id,
        email: user.email.clone(),
        roles: user.roles.clone(),
        account_roles: user.account_roles.clone(),
    }
}
