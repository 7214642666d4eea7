//! Policy hot reload: on a change of the policy files (looked at every `[policies]
//! reload_interval`, default 1 s, and acted on once they have stayed the same for one
//! more look) or on SIGHUP, the files are loaded and checked in full; a valid policy
//! is swapped in atomically with the rest of the snapshot, an invalid one is logged
//! with every problem and the last good policy stays in force.
//!
//! Requests in flight keep the snapshot they started with (`RequestContext`), so a
//! reload never mixes two policies in one decision.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::audit::Audit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Snapshot;

pub struct PolicyReloader {
    config: Config,
    dir: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    poll: Duration,
}

/// Names, sizes and modification times of the policy files.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &std::path::Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "toml"))
        .filter_map(|entry| {
            let metadata = entry.metadata().ok()?;
            Some((entry.path(), metadata.len(), metadata.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

impl PolicyReloader {
    /// `None` when the configuration has no policy directory.
    pub fn new(
        config: &Config,
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> Option<Self> {
        Some(Self {
            dir: config.policies_dir.clone()?,
            config: config.clone(),
            snapshot,
            metrics,
            audit,
            poll: config.policies_reload_interval,
        })
    }

    /// Loads and checks the policy files; swaps them in when valid.
    async fn reload(&self) {
        let dir = self.dir.clone();
        let inputs = crate::policy::file::Inputs::of(&self.config);
        let loaded =
            tokio::task::spawn_blocking(move || crate::policy::file::load(&dir, &inputs)).await;
        let Ok(loaded) = loaded else {
            self.metrics.policy_reload(false);
            tracing::error!("policy reload failed on the blocking pool");
            return;
        };
        let problems: Vec<String> = loaded
            .reports
            .iter()
            .flat_map(crate::config::Report::one_line_each)
            .collect();
        let Some(rules) = loaded.rules else {
            self.metrics.policy_reload(false);
            for problem in &problems {
                tracing::error!(target: "portcullis::policy", "{problem}");
            }
            tracing::error!(
                errors = problems.len(),
                "policy not reloaded; the last good policy stays in force"
            );
            self.audit.security(
                "policy-reload-failed",
                Some(&format!("{} problem(s); see the log", problems.len())),
            );
            return;
        };
        let count = rules.len();
        let mut config = self.config.clone();
        config.rules = Some(Arc::new(rules));
        match Snapshot::build(&config) {
            Ok(snapshot) => {
                self.snapshot.store(Arc::new(snapshot));
                self.metrics.policy_reload(true);
                tracing::info!(rules = count, "policy reloaded");
                self.audit
                    .security("policy-reloaded", Some(&format!("{count} rule(s)")));
            }
            Err(error) => {
                self.metrics.policy_reload(false);
                tracing::error!(%error, "policy not reloaded; the last good policy stays in force");
            }
        }
    }

    async fn look(&self) -> Option<Fingerprint> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || fingerprint(&dir))
            .await
            .ok()
    }
}

#[async_trait]
impl BackgroundService for PolicyReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut loaded = self.look().await;
        // A change seen but not yet acted on: the files must stay as they are for one
        // more look (editors and deploy tools write in several steps).
        let mut pending: Option<Option<Fingerprint>> = None;
        let watch = !self.poll.is_zero();
        let mut ticks = tokio::time::interval(self.poll.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = super::delivered(&mut hangup) => {
                    tracing::info!("SIGHUP: reloading the policy");
                    loaded = self.look().await;
                    pending = None;
                    self.reload().await;
                    continue;
                }
                _ = ticks.tick(), if watch => {}
            }
            let now = self.look().await;
            if now == loaded {
                pending = None;
                continue;
            }
            if pending.as_ref() == Some(&now) {
                loaded = now;
                pending = None;
                self.reload().await;
            } else {
                pending = Some(now);
            }
        }
    }
}

/// Without policy files there is nothing to reload in place, but SIGHUP (what
/// `systemctl reload` sends) is still claimed: its default action would end the
/// gateway. Each one is logged with what a reload would need.
pub struct NothingToReload;

#[async_trait]
impl BackgroundService for NothingToReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = super::delivered(&mut hangup) => tracing::warn!(
                    "SIGHUP: nothing reloaded; routes from [[route]] tables change at a restart, \
                     policy files ([policies] dir) reload in place"
                ),
            }
        }
    }
}
