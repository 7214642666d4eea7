//! State that gateway instances share through Redis.
//!
//! Names start with the configured prefix (default `portcullis`), so several
//! deployments can share one Redis.
//!
//! - `{prefix}:not-before:{user}`: Unix seconds; tokens of that user issued earlier
//!   are refused. Expires after the token max age, when every such token has expired
//!   anyway. Only ever moves forward (a Lua script compares and sets atomically).
//! - channel `{prefix}:changes`: `user:{id}` or `account:{id}` whenever a user or
//!   account changed, so every instance forgets what it cached about them.

use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;

use super::StoreError;
use crate::directory::{Change, UserId};

/// Sets the key to ARGV[1] unless it already holds a later time; expires in ARGV[2] s.
const RAISE_NOT_BEFORE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1";

/// GCRA over several keys at once, all or nothing, on Redis's clock (so instances
/// with skewed clocks still share one budget). KEYS[i] holds a theoretical arrival
/// time in µs; ARGV[2i-1] is the emission interval and ARGV[2i] the burst tolerance
/// (interval × (burst − 1)), both in µs. Returns `{1, remaining…}` when every key
/// admits the request (and counts it in each), else `{0, index, wait µs}` for the key
/// that needs the longest wait, counting nothing. Keys expire once their budget is
/// full again. The same arithmetic as governor's `Gcra::test_and_update`.
const GCRA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tats = {}
local worst, wait = 0, -1
for i = 1, #KEYS do
  local interval, tolerance = tonumber(ARGV[2*i-1]), tonumber(ARGV[2*i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local earliest = tat - tolerance
  if now < earliest and earliest - now > wait then
    worst, wait = i, earliest - now
  end
end
if wait >= 0 then return {0, worst, wait} end
local answer = {1}
for i = 1, #KEYS do
  local interval, tolerance = tonumber(ARGV[2*i-1]), tonumber(ARGV[2*i])
  local next_tat = tats[i] + interval
  local ttl = math.ceil((next_tat - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.0f', next_tat), 'PX', ttl)
  answer[i + 1] = math.floor((now + tolerance + interval - next_tat) / interval)
end
return answer";

/// One key's parameters for [`Cluster::gcra`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcraKey {
    /// The full key name, prefix included (see [`Cluster::key`]).
    pub key: String,
    pub interval: Duration,
    pub burst: u32,
}

/// What [`Cluster::gcra`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcraAnswer {
    /// Counted under every key; how many more each would admit now.
    Allowed(Vec<u32>),
    /// Counted nowhere; key `index` admits the next request after `wait`.
    Refused { index: usize, wait: Duration },
}

/// A Redis server shared by every gateway instance.
pub struct Cluster {
    client: redis::Client,
    connection: ArcSwapOption<MultiplexedConnection>,
    timeout: Duration,
    prefix: String,
}

/// Change notifications as they arrive; ends when the connection is lost.
pub struct Subscription {
    stream: redis::aio::PubSubStream,
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl Cluster {
    /// Parses the URL; connects on first use, so the gateway starts while Redis is down.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::BadUrl(e.to_string()))?;
        Ok(Self {
            client,
            connection: ArcSwapOption::empty(),
            timeout,
            prefix: prefix.to_owned(),
        })
    }

    fn channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        let connection =
            tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| unavailable("redis connect timed out"))?
                .map_err(unavailable)?;
        self.connection
            .store(Some(std::sync::Arc::new(connection.clone())));
        Ok(connection)
    }

    /// Runs one command with the timeout; a failure drops the connection so the next
    /// call reconnects.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection))
            .await
            .map_err(|_| unavailable("redis command timed out"))
            .and_then(|r| r.map_err(unavailable));
        if result.is_err() {
            self.connection.store(None);
        }
        result
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    fn not_before_key(&self, user: UserId) -> String {
        format!("{}:not-before:{user}", self.prefix)
    }

    /// The shared not-before time of `user`, if one is set.
    pub async fn not_before(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        self.query(redis::cmd("GET").arg(self.not_before_key(user)))
            .await
    }

    /// Raises the not-before time of `user` to `at`, kept for `keep`.
    pub async fn raise_not_before(
        &self,
        user: UserId,
        at: i64,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let mut command = redis::cmd("EVAL");
        command
            .arg(RAISE_NOT_BEFORE)
            .arg(1)
            .arg(self.not_before_key(user))
            .arg(at)
            .arg(keep.as_secs().max(1));
        self.query::<i64>(&command).await.map(drop)
    }

    fn session_key(&self, id_digest: &str) -> String {
        format!("{}:session:{id_digest}", self.prefix)
    }

    /// A web-login session by the digest of its id.
    pub async fn session(&self, id_digest: &str) -> Result<Option<String>, StoreError> {
        self.query(redis::cmd("GET").arg(self.session_key(id_digest)))
            .await
    }

    /// Stores a session that expires after `idle` unless written again.
    pub async fn save_session(
        &self,
        id_digest: &str,
        value: &str,
        idle: Duration,
    ) -> Result<(), StoreError> {
        let mut command = redis::cmd("SET");
        command
            .arg(self.session_key(id_digest))
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1));
        self.query::<String>(&command).await.map(drop)
    }

    pub async fn remove_session(&self, id_digest: &str) -> Result<(), StoreError> {
        self.query::<i64>(redis::cmd("DEL").arg(self.session_key(id_digest)))
            .await
            .map(drop)
    }

    /// A key name under this deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Checks and counts a request under several GCRA keys in one round trip.
    pub async fn gcra(&self, keys: &[GcraKey]) -> Result<GcraAnswer, StoreError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(GCRA));
        if keys.is_empty() {
            return Ok(GcraAnswer::Allowed(Vec::new()));
        }
        let mut invocation = SCRIPT.prepare_invoke();
        for key in keys {
            let interval = u64::try_from(key.interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            invocation
                .key(&key.key)
                .arg(interval)
                .arg(interval.saturating_mul(u64::from(key.burst.saturating_sub(1))));
        }
        let mut connection = self.connection().await?;
        let result = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await
        .map_err(|_| unavailable("redis command timed out"))
        .and_then(|r| r.map_err(unavailable));
        if result.is_err() {
            self.connection.store(None);
        }
        parse_gcra(&result?)
    }

    /// Tells every instance that a user or account changed.
    pub async fn publish(&self, change: &Change) -> Result<(), StoreError> {
        let message = match (change.user, change.account) {
            (Some(user), _) => format!("user:{user}"),
            (None, Some(account)) => format!("account:{account}"),
            (None, None) => return Ok(()),
        };
        self.query::<i64>(redis::cmd("PUBLISH").arg(self.channel()).arg(message))
            .await
            .map(drop)
    }

    /// Subscribes to change notifications on a connection of its own.
    pub async fn subscribe(&self) -> Result<Subscription, StoreError> {
        let mut pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| unavailable("redis connect timed out"))?
            .map_err(unavailable)?;
        tokio::time::timeout(self.timeout, pubsub.subscribe(self.channel()))
            .await
            .map_err(|_| unavailable("redis subscribe timed out"))?
            .map_err(unavailable)?;
        Ok(Subscription {
            stream: pubsub.into_on_message(),
        })
    }
}

impl Subscription {
    /// The next change; `None` when the subscription's connection is gone. Messages
    /// that are not change notices are skipped.
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            let message = self.stream.next().await?;
            let payload: String = message.get_payload().unwrap_or_default();
            if let Some(change) = parse_notice(&payload) {
                return Some(change);
            }
        }
    }
}

fn parse_gcra(reply: &[i64]) -> Result<GcraAnswer, StoreError> {
    match reply {
        [1, remaining @ ..] => Ok(GcraAnswer::Allowed(
            remaining
                .iter()
                .map(|n| u32::try_from(*n).unwrap_or(0))
                .collect(),
        )),
        [0, index, wait] => Ok(GcraAnswer::Refused {
            index: usize::try_from(*index - 1).unwrap_or(0),
            wait: Duration::from_micros(u64::try_from(*wait).unwrap_or(0)),
        }),
        _ => Err(unavailable("unexpected reply from the rate-limit script")),
    }
}

fn parse_notice(payload: &str) -> Option<Change> {
    let (kind, id) = payload.split_once(':')?;
    let id: i64 = id.parse().ok()?;
    match kind {
        "user" => Some(Change {
            seq: 0,
            user: Some(id),
            account: None,
        }),
        "account" => Some(Change {
            seq: 0,
            user: None,
            account: Some(id),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_name_a_user_or_an_account() {
        assert_eq!(parse_notice("user:7").and_then(|c| c.user), Some(7));
        assert_eq!(parse_notice("account:3").and_then(|c| c.account), Some(3));
        for junk in ["user:", "user:x", "role:1", "7", ""] {
            assert!(parse_notice(junk).is_none(), "{junk}");
        }
    }
}
