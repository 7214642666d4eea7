//! Web-login sessions: what the gateway remembers about a browser between requests.
//!
//! The browser holds only an opaque random id (256 bits) in a `__Host-` cookie; the
//! store holds the session under the SHA-256 of that id, so a dump of Redis or memory
//! yields no usable cookie. Sessions live in Redis when `[redis]` is configured (every
//! instance sees them) and in this process's memory otherwise; either way they
//! expire after the idle timeout unless used, and the absolute timeout is checked
//! against their start.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::{digest_hex, random_text};
use crate::directory::UserId;
use crate::store::{Cluster, StoreError};

/// How far a session got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The password was right; the second factor is outstanding.
    Password,
    /// Password and second factor passed.
    Complete,
}

/// Which second factor a pending code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Email,
    Totp,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Totp => "totp",
        }
    }
}

/// The second factor a session waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub method: Method,
    /// SHA-256 of the emailed code with the session's salt; `None` for TOTP.
    pub code_hash: Option<String>,
    /// Unix seconds after which the emailed code is refused.
    pub expires: i64,
    /// Wrong codes tried against this one.
    pub attempts: u32,
    /// When the code was mailed, to pace resending.
    pub sent_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: UserId,
    /// Unix seconds of the password check; the absolute timeout counts from here.
    pub created: i64,
    /// Last use, written at most once a minute.
    pub seen: i64,
    pub stage: Stage,
    /// SHA-256 (hex) of the password hash at login: a password change ends the session.
    pub fingerprint: String,
    #[serde(default)]
    pub pending: Option<Pending>,
    /// A TOTP secret being enrolled (sealed), until a code confirms it.
    #[serde(default)]
    pub enrolling: Option<String>,
    /// Salt for the emailed code's hash.
    pub salt: String,
}

/// A session id as the cookie carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl std::fmt::Debug for SessionId {
    /// SECURITY: session ids never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(…)")
    }
}

impl SessionId {
    pub fn new() -> Self {
        Self(random_text(32))
    }

    /// An id from a cookie; anything that is not 43 URL-safe base64 characters is
    /// no session of ours.
    pub fn from_cookie(value: &str) -> Option<Self> {
        super::keys::is_random_text(value, 32).then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn digest(&self) -> String {
        digest_hex(&self.0)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

/// Where sessions are kept.
pub enum SessionStore {
    Memory(moka::sync::Cache<String, Arc<Session>>),
    Redis(Cluster),
}

impl SessionStore {
    /// In memory: at most `capacity` sessions, each dropped after `idle` unused.
    pub fn memory(capacity: u64, idle: Duration) -> Self {
        Self::Memory(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
        )
    }

    pub async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        match self {
            Self::Memory(cache) => Ok(cache.get(&id.digest()).map(|s| (*s).clone())),
            Self::Redis(cluster) => match cluster.session(&id.digest()).await? {
                // A value that no longer parses (an older format) is no session.
                Some(text) => Ok(serde_json::from_str(&text).ok()),
                None => Ok(None),
            },
        }
    }

    /// Stores `session` under `id`; it expires after `idle` unless saved again.
    pub async fn save(
        &self,
        id: &SessionId,
        session: &Session,
        idle: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(cache) => {
                cache.insert(id.digest(), Arc::new(session.clone()));
                Ok(())
            }
            Self::Redis(cluster) => {
                let text = serde_json::to_string(session)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                cluster.save_session(&id.digest(), &text, idle).await
            }
        }
    }

    pub async fn remove(&self, id: &SessionId) -> Result<(), StoreError> {
        match self {
            Self::Memory(cache) => {
                cache.invalidate(&id.digest());
                Ok(())
            }
            Self::Redis(cluster) => cluster.remove_session(&id.digest()).await,
        }
    }

    /// Sessions held in memory (Redis: not counted here).
    pub fn count(&self) -> Option<u64> {
        match self {
            Self::Memory(cache) => {
                cache.run_pending_tasks();
                Some(cache.entry_count())
            }
            Self::Redis(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            user: 7,
            created: 100,
            seen: 100,
            stage: Stage::Password,
            fingerprint: "f".into(),
            pending: None,
            enrolling: None,
            salt: "s".into(),
        }
    }

    #[test]
    fn session_ids_are_random_cookie_safe_and_never_printed() {
        let (a, b) = (SessionId::new(), SessionId::new());
        assert_ne!(a, b);
        assert_eq!(SessionId::from_cookie(a.as_str()), Some(a.clone()));
        assert_eq!(format!("{a:?}"), "SessionId(…)");
        for bad in ["", "short", &format!("{}=", a.as_str()), &"é".repeat(43)] {
            assert_eq!(SessionId::from_cookie(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn memory_store_keeps_sessions_under_their_digest_and_forgets_removed_ones() {
        let store = SessionStore::memory(10, Duration::from_secs(60));
        let id = SessionId::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert_eq!(store.load(&id).await.expect("load"), None);
            store
                .save(&id, &session(), Duration::from_secs(60))
                .await
                .expect("save");
            assert_eq!(store.load(&id).await.expect("load"), Some(session()));
            if let SessionStore::Memory(cache) = &store {
                assert!(cache.get(id.as_str()).is_none(), "stored by digest, not id");
            }
            store.remove(&id).await.expect("remove");
            assert_eq!(store.load(&id).await.expect("load"), None);
        });
    }
}
