//! The native directory's identities: tokens in the seeds' format (DESIGN §3),
//! verified against the gateway's own tables.
//!
//! Validation order: signature (constant time) → age → user exists and is active →
//! token not revoked (issued before the user's not-before time) → sha256_crypt of
//! the current password hash matches the token's.
//!
//! The slow sha256_crypt check runs once per token: verified tokens are cached by a
//! keyed digest of the token ([`TokenDigester`]), with the fingerprint of the
//! password hash they were checked against, until they expire. Users are cached too
//! and forgotten when the change feed (`feed`) says they changed; while the feed is
//! not fresh, users are read from the stores on every request, and a store that
//! cannot answer means 503.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::blocking::BlockingPool;
use super::{
    Identity, IdentityError, Issued, LoginAttempt, LoginError, OwnedRuntime, SessionHolder,
    StartError, VerificationPath, Verified, feed, migrate_now, on_runtime, open_directory,
    password, start_runtime,
};
use crate::config::Config;
use crate::directory::{self, Change, Directory, User, UserId};
use crate::metrics::Metrics;
use crate::rate_limit::lockout::Lockout;
use crate::secret::Secret;
use crate::store::StoreError;
use crate::token::{self, TokenError, TokenKeys};

/// A user as cached for token checks.
struct CachedUser {
    identity: Arc<Identity>,
    active: bool,
    not_before: i64,
    sessions_not_before: i64,
    password_hash: Secret<String>,
    fingerprint: [u8; 32],
}

/// A token whose slow check passed.
#[derive(Clone, Copy)]
struct VerifiedToken {
    user_id: UserId,
    issued_at: i64,
    /// SHA-256 of the password hash it was checked against.
    fingerprint: [u8; 32],
}

/// SHA-256 of the user's password hash: what tokens and sessions were checked
/// against, so a password change is noticed without keeping the hash.
pub fn password_fingerprint(user: &User) -> [u8; 32] {
    sha256(user.password_hash.expose().as_bytes())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The token cache's key: SipHash-2-4 with a 128-bit output, under a key drawn from
/// the operating system's random source when the gateway starts.
///
/// SECURITY: a cache hit skips the signature and the sha256_crypt check, so a token
/// must never share a key with a verified one. SipHash is a pseudorandom function:
/// without the key, which never leaves the process, a client can do no better than
/// guess, with one chance in 2^128 per cached token and attempt. Neither a token nor
/// anything that could stand in for one is held in memory, only these digests. It
/// replaced SHA-256, which cost about ten times as much on processors without SHA
/// instructions (6 300 of 139 500 instructions a proxied request under callgrind).
#[derive(Clone, Copy)]
pub struct TokenDigester {
    key: [u8; 16],
}

impl TokenDigester {
    /// A digester with a fresh random key; `None` when the random source fails.
    pub fn random() -> Option<Self> {
        let mut key = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).ok()?;
        Some(Self { key })
    }

    pub fn digest(&self, token: &[u8]) -> u128 {
        use siphasher::sip128::Hasher128 as _;
        use std::hash::Hasher as _;
        let mut hasher = siphasher::sip128::SipHasher24::new_with_key(&self.key);
        hasher.write(token);
        hasher.finish128().as_u128()
    }
}

/// The caches the feed forgets from. Their keys are not chosen by clients (user ids,
/// and keyed digests of tokens that passed the full check), so they hash with
/// foldhash, seeded per process, rather than SipHash.
struct Caches {
    users: Cache<UserId, Arc<CachedUser>, foldhash::fast::RandomState>,
    tokens: Cache<u128, VerifiedToken, foldhash::fast::RandomState>,
    digester: TokenDigester,
}

impl feed::Forget for Caches {
    fn forget(&self, change: &Change) {
        match (change.user, change.account) {
            (Some(user), _) => self.users.invalidate(&user),
            // An account's roles changed: every user of it carries them.
            (None, Some(_)) => self.users.invalidate_all(),
            (None, None) => {}
        }
    }

    fn forget_all(&self) {
        self.users.invalidate_all();
    }
}

/// Verifies native tokens and passwords against the gateway's own tables.
pub struct Native {
    runtime: OwnedRuntime,
    handle: tokio::runtime::Handle,
    directory: Arc<Directory>,
    keys: TokenKeys,
    caches: Arc<Caches>,
    freshness: Arc<feed::Freshness>,
    pool: BlockingPool,
    bcrypt_cost: u32,
    dummy_hash: Arc<str>,
    login_path: String,
    metrics: Arc<Metrics>,
}

impl Native {
    /// Starts the identity runtime, applies migrations and the change feed. `None`
    /// when the configuration has no directory.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Self>, StartError> {
        let Some(settings) = &config.directory else {
            return Ok(None);
        };
        let Some(keys) = TokenKeys::from_settings(&config.tokens) else {
            return Ok(None);
        };
        let (runtime, handle) = start_runtime()?;
        let directory = {
            let _guard = handle.enter();
            Arc::new(
                open_directory(config)
                    .map_err(StartError::Store)?
                    .ok_or_else(|| StartError::Store(StoreError::BadUrl("no directory".into())))?,
            )
        };
        // Migrations: a database that is down now is retried in the background; until
        // then token checks get 503.
        let migrated = migrate_now(&handle, directory.database().clone(), settings.timeout * 10);
        let ttl = config.tokens.max_age.min(Duration::from_secs(24 * 3600));
        let caches = Arc::new(Caches {
            users: Cache::builder()
                .max_capacity(config.tokens.cache_capacity)
                .time_to_live(settings.cache_ttl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            tokens: Cache::builder()
                .max_capacity(config.tokens.cache_capacity)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            digester: TokenDigester::random().ok_or(StartError::Random)?,
        });
        let freshness = feed::start(
            &handle,
            directory.clone(),
            caches.clone(),
            settings.change_poll,
            migrated,
        );
        let pool = BlockingPool::new(
            settings.password_workers,
            settings.password_queue,
            settings.password_priority,
        )
        .map_err(StartError::Runtime)?;
        let dummy_hash: Arc<str> = password::dummy_hash(settings.bcrypt_cost).into();
        Ok(Some(Self {
            runtime,
            handle,
            directory,
            keys,
            caches,
            freshness,
            pool,
            bcrypt_cost: settings.bcrypt_cost,
            dummy_hash,
            login_path: settings.login_path.clone(),
            metrics,
        }))
    }

    /// Where `POST` issues tokens.
    pub fn login_path(&self) -> &str {
        &self.login_path
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    /// The gateway's own tables (the directory's database) and the runtime to use
    /// them on.
    pub(super) fn own_tables(&self) -> (&tokio::runtime::Handle, crate::store::Database) {
        (&self.handle, self.directory.database().clone())
    }

    /// Whether the directory (and Redis, when configured) answer; for `/readyz`.
    pub async fn ready(&self) -> Result<(), StoreError> {
        let directory = self.directory.clone();
        on_runtime(&self.handle, async move {
            directory.database().ping().await?;
            if let Some(cluster) = directory.cluster() {
                cluster.ping().await?;
            }
            Ok(())
        })
        .await
    }

    /// Runs a policy resource query on the directory's database (see
    /// `policy::rules::Resource`), on the identity runtime.
    pub async fn resolve(
        &self,
        query: Arc<str>,
        key: String,
    ) -> Result<Option<(Option<i64>, Option<i64>)>, StoreError> {
        let directory = self.directory.clone();
        on_runtime(&self.handle, async move {
            directory.database().resolve(&query, &key).await
        })
        .await
    }

    /// Verifies the token in an `Authorization` header value.
    pub async fn identify(&self, authorization: &[u8]) -> Result<Verified, IdentityError> {
        let token = token::from_authorization(authorization)
            .ok_or(IdentityError::Invalid("no usable token in Authorization"))?;
        let now = directory::now();
        let digest = self.caches.digester.digest(token.as_bytes());
        if let Some(verified) = self.caches.tokens.get(&digest) {
            if now.saturating_sub(verified.issued_at) > self.keys.max_age() {
                self.caches.tokens.invalidate(&digest);
                return Err(IdentityError::Invalid(TokenError::Expired.kind()));
            }
            let user = self.user(verified.user_id).await?;
            check_user(&user, verified.issued_at)?;
            // SECURITY: the password changed since this token was verified.
            if !crate::secret::constant_time_eq(&user.fingerprint, &verified.fingerprint) {
                self.caches.tokens.invalidate(&digest);
                return Err(IdentityError::Invalid("password changed"));
            }
            return Ok(Verified {
                identity: user.identity.clone(),
                path: VerificationPath::Cached,
            });
        }
        // Boxed: the cold check's future (a store read, a sha256_crypt on the pool)
        // would otherwise be part of every cached check's.
        Box::pin(self.verify(token, digest, now)).await
    }

    /// The full check of a token not in the cache; caches it when it passes.
    async fn verify(&self, token: &str, digest: u128, now: i64) -> Result<Verified, IdentityError> {
        let claims = self
            .keys
            .decode(token, now)
            .map_err(|e| IdentityError::Invalid(e.kind()))?;
        let user = self.user(claims.user_id).await?;
        check_user(&user, claims.issued_at)?;
        let hash = user.password_hash.clone();
        let crypt = claims.password_crypt;
        let matches = self
            .pool
            .run(move || token::password_crypt_matches(&crypt, hash.expose()))
            .await
            .map_err(|e| IdentityError::Unavailable(e.to_string()))?;
        if !matches {
            return Err(IdentityError::Invalid("password changed"));
        }
        self.caches.tokens.insert(
            digest,
            VerifiedToken {
                user_id: user.identity.user_id,
                issued_at: claims.issued_at,
                fingerprint: user.fingerprint,
            },
        );
        Ok(Verified {
            identity: user.identity.clone(),
            path: VerificationPath::Verified,
        })
    }

    /// A user for token checks: from the cache while the change feed is fresh, else
    /// from the stores.
    async fn user(&self, id: UserId) -> Result<Arc<CachedUser>, IdentityError> {
        if self.freshness.is_fresh()
            && let Some(user) = self.caches.users.get(&id)
        {
            return Ok(user);
        }
        let directory = self.directory.clone();
        // Boxed, for the same reason as the cold token check.
        let loaded = Box::pin(on_runtime(&self.handle, async move {
            directory.user_by_id(id).await
        }))
        .await
        .map_err(|e| IdentityError::Unavailable(e.to_string()))?
        .ok_or(IdentityError::Invalid("unknown user"))?;
        let cached = Arc::new(cached(loaded));
        self.caches.users.insert(id, cached.clone());
        Ok(cached)
    }

    /// The lockout in force for any of `keys`, if one is (see `rate_limit::lockout`).
    pub async fn lockout(&self, keys: Vec<String>) -> Result<Option<Lockout>, StoreError> {
        let directory = self.directory.clone();
        on_runtime(&self.handle, async move {
            directory.database().lockout(&keys, directory::now()).await
        })
        .await
    }

    /// Records a lockout for every instance to see.
    pub async fn lock_out(&self, lockout: Lockout) -> Result<(), StoreError> {
        let directory = self.directory.clone();
        on_runtime(&self.handle, async move {
            directory.database().lock_out(&lockout).await
        })
        .await
    }

    /// Checks an email and password and issues a token (`POST /api/requestAuthToken`).
    pub async fn login(&self, attempt: LoginAttempt) -> Result<Issued, LoginError> {
        let (user, crypt) = self.verify_password(attempt).await?;
        // A token issued in the second of a revocation would be refused; date it at
        // the not-before time instead (at most a second ahead, within the skew).
        let issued_at = directory::now().max(user.tokens_not_before);
        Ok(Issued {
            token: Secret::new(self.keys.issue(user.id, &crypt, issued_at)),
            user_id: user.id,
        })
    }

    /// Checks an email and password for the web login: the active user they belong to.
    pub async fn check_password(&self, attempt: LoginAttempt) -> Result<User, LoginError> {
        self.verify_password(attempt).await.map(|(user, _)| user)
    }

    /// The user behind a web-login session, as the caches know them.
    pub async fn session_holder(&self, id: UserId) -> Result<SessionHolder, IdentityError> {
        let user = self.user(id).await?;
        Ok(SessionHolder {
            identity: user.identity.clone(),
            active: user.active,
            fingerprint: user.fingerprint,
            sessions_not_before: user.sessions_not_before,
        })
    }

    /// Runs directory work (second factors) on the identity runtime.
    pub async fn on_directory<T, F>(
        &self,
        work: impl FnOnce(Arc<Directory>) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        on_runtime(&self.handle, work(self.directory.clone())).await
    }

    /// The password check both logins share: the user and the sha256_crypt of their
    /// password hash, for a token.
    async fn verify_password(&self, attempt: LoginAttempt) -> Result<(User, String), LoginError> {
        let password = attempt.password;
        let directory = self.directory.clone();
        let email = attempt.email;
        let user = on_runtime(
            &self.handle,
            async move { directory.find_user(&email).await },
        )
        .await
        .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let dummy = self.dummy_hash.clone();
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let metrics = self.metrics.clone();
        // SECURITY: unknown users and inactive users cost one bcrypt run like everyone
        // else, and get the same answer as a wrong password.
        let issued = self
            .pool
            .run(move || {
                let hash = hash.as_ref().map(|h| h.expose().as_str());
                metrics.password_check();
                password::verify(&password, hash, &dummy)
                    .then(|| hash.map(token::password_crypt))
                    .flatten()
            })
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let (Some(user), Some(crypt)) = (user, issued) else {
            return Err(LoginError::BadCredentials);
        };
        if !user.active || crypt.is_empty() {
            return Err(LoginError::BadCredentials);
        }
        Ok((user, crypt))
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        // The runtime field shuts down in the background; nothing else to release.
        let _ = &self.runtime;
    }
}

fn cached(user: User) -> CachedUser {
    CachedUser {
        fingerprint: password_fingerprint(&user),
        identity: Arc::new(Identity {
            user_id: user.id,
            account_id: user.account_id,
            email: user.email,
            roles: user.roles,
            account_roles: user.account_roles,
        }),
        active: user.active,
        not_before: user.tokens_not_before,
        sessions_not_before: user.sessions_not_before,
        password_hash: user.password_hash,
    }
}

fn check_user(user: &CachedUser, issued_at: i64) -> Result<(), IdentityError> {
    if !user.active {
        return Err(IdentityError::Invalid("user inactive"));
    }
    if issued_at < user.not_before {
        return Err(IdentityError::Invalid("token revoked"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TokenDigester;

    #[test]
    fn a_token_digest_depends_on_every_byte_and_on_the_key() {
        let digester = TokenDigester::random().expect("random key");
        let token = b"eyJ1aWQiOjF9.BfJ3kQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let digest = digester.digest(token);
        assert_eq!(
            digester.digest(token),
            digest,
            "the same token, the same key"
        );
        for index in 0..token.len() {
            let mut changed = token.to_vec();
            changed[index] ^= 1;
            assert_ne!(digester.digest(&changed), digest, "byte {index} changed");
        }
        let mut longer = token.to_vec();
        longer.push(b'A');
        assert_ne!(digester.digest(&longer), digest);
        assert_ne!(digester.digest(&token[..token.len() - 1]), digest);
        let other = TokenDigester::random().expect("random key");
        assert_ne!(other.digest(token), digest, "another process, another key");
    }
}
