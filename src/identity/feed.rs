//! Keeps cached users honest: the change feed.
//!
//! Two tasks on the identity runtime. One applies migrations if that failed at start
//! (the database was down), then polls the database's `directory_changes`
//! every `change_poll` and forgets the users (or, for an account change, every user)
//! named there. With Redis configured, the other listens to change notices so other
//! instances' changes arrive within milliseconds, and pings Redis every 250 ms.
//!
//! [`Freshness::is_fresh`] says whether cached users may be trusted right now: the
//! last poll succeeded recently and, with Redis, the subscription is up and answered
//! within a second. When not fresh, `identity` reads users from the stores directly,
//! and refuses with 503 if those cannot answer (fail closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::directory::{Change, Directory};

const REDIS_PING: Duration = Duration::from_millis(250);
const REDIS_STALE: Duration = Duration::from_secs(1);

/// Forgets cached users when told.
pub trait Forget: Send + Sync + 'static {
    fn forget(&self, change: &Change);
    fn forget_all(&self);
}

pub struct Freshness {
    origin: Instant,
    /// Milliseconds since `origin` of the last good poll / Redis answer; 0: never.
    polled: AtomicU64,
    pinged: AtomicU64,
    subscribed: AtomicBool,
    uses_redis: bool,
    poll_stale: Duration,
}

impl Freshness {
    fn new(uses_redis: bool, poll: Duration) -> Self {
        Self {
            origin: Instant::now(),
            polled: AtomicU64::new(0),
            pinged: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            uses_redis,
            poll_stale: (poll * 4).max(Duration::from_secs(1)),
        }
    }

    fn mark(&self, slot: &AtomicU64) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        slot.store(ms.max(1), Ordering::Release);
    }

    fn within(&self, slot: &AtomicU64, limit: Duration) -> bool {
        let at = slot.load(Ordering::Acquire);
        if at == 0 {
            return false;
        }
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(at) <= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether every change made elsewhere has reached this instance's caches.
    pub fn is_fresh(&self) -> bool {
        self.within(&self.polled, self.poll_stale)
            && (!self.uses_redis
                || (self.subscribed.load(Ordering::Acquire)
                    && self.within(&self.pinged, REDIS_STALE)))
    }
}

/// Starts the feed tasks on `runtime`; they end when the runtime shuts down.
pub fn start(
    runtime: &tokio::runtime::Handle,
    directory: Arc<Directory>,
    caches: Arc<dyn Forget>,
    poll: Duration,
    migrated: bool,
) -> Arc<Freshness> {
    let freshness = Arc::new(Freshness::new(directory.cluster().is_some(), poll));
    runtime.spawn(poll_database(
        directory.clone(),
        caches.clone(),
        freshness.clone(),
        poll,
        migrated,
    ));
    if directory.cluster().is_some() {
        runtime.spawn(listen_redis(directory, caches, freshness.clone()));
    }
    freshness
}

async fn poll_database(
    directory: Arc<Directory>,
    caches: Arc<dyn Forget>,
    freshness: Arc<Freshness>,
    poll: Duration,
    mut migrated: bool,
) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<i64> = None;
    let mut failing = false;
    loop {
        ticker.tick().await;
        if !migrated {
            match directory.database().migrate().await {
                Ok(()) => {
                    tracing::info!("directory migrations applied");
                    migrated = true;
                }
                Err(_) => continue,
            }
        }
        let result = match last {
            None => directory.database().latest_change().await.map(|seq| {
                last = Some(seq);
                Vec::new()
            }),
            Some(seq) => directory.database().changes_since(seq, 1000).await,
        };
        match result {
            Ok(changes) => {
                for change in &changes {
                    caches.forget(change);
                    last = Some(change.seq);
                }
                // Only a complete catch-up makes the caches fresh.
                if changes.len() < 1000 {
                    freshness.mark(&freshness.polled);
                }
                if failing {
                    tracing::info!("directory change feed recovered");
                    failing = false;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "directory change feed cannot be read; cached users are not trusted until it can");
                    failing = true;
                }
            }
        }
    }
}

async fn listen_redis(
    directory: Arc<Directory>,
    caches: Arc<dyn Forget>,
    freshness: Arc<Freshness>,
) {
    let Some(cluster) = directory.cluster() else {
        return;
    };
    let mut failing = false;
    loop {
        let mut subscription = match cluster.subscribe().await {
            Ok(subscription) => subscription,
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "redis change notices unavailable; token checks that need redis are refused until it returns");
                    failing = true;
                }
                tokio::time::sleep(REDIS_PING).await;
                continue;
            }
        };
        // Notices may have been missed while unsubscribed.
        caches.forget_all();
        freshness.subscribed.store(true, Ordering::Release);
        if failing {
            tracing::info!("redis change notices recovered");
            failing = false;
        }
        let mut ticker = tokio::time::interval(REDIS_PING);
        loop {
            tokio::select! {
                change = subscription.next() => match change {
                    Some(change) => caches.forget(&change),
                    None => break,
                },
                _ = ticker.tick() => match cluster.ping().await {
                    Ok(()) => freshness.mark(&freshness.pinged),
                    Err(_) => break,
                },
            }
        }
        freshness.subscribed.store(false, Ordering::Release);
        tracing::warn!("redis change notices lost; resubscribing");
    }
}
