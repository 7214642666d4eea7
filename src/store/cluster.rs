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
