//! Brute-force protection shared by both password logins (the token endpoint and
//! the web login): every attempt counts against the login limits, a key in a
//! lockout is refused, and failures count towards a lockout (DESIGN §6).

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Audit;
use crate::identity::Authenticator;
use crate::metrics::Metrics;
use crate::rate_limit::lockout::Lockout;
use crate::rate_limit::{Exceeded, LimitClass, RateLimiter, Subject};
use crate::rejection::Rejection;

/// The limits of the snapshot a login is decided with.
#[derive(Clone, Copy)]
pub struct LoginLimits<'a> {
    /// Every attempt.
    pub attempts: &'a [Arc<LimitClass>],
    /// Failed attempts; exceeding one locks the key out.
    pub failures: &'a [Arc<LimitClass>],
    /// How long a lockout lasts; zero: none.
    pub lockout: Duration,
}

pub struct LoginGuard {
    limiter: Arc<RateLimiter>,
    authenticator: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
}

impl LoginGuard {
    pub fn new(
        limiter: Arc<RateLimiter>,
        authenticator: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> Self {
        Self {
            limiter,
            authenticator,
            metrics,
            audit,
        }
    }

    /// Counts an attempt under `classes`, refusing beyond them (429, or 503 when the
    /// limits cannot be checked and the configuration says so).
    pub async fn count(
        &self,
        classes: &[Arc<LimitClass>],
        subject: &Subject<'_>,
    ) -> Result<(), Rejection> {
        self.limiter
            .check(classes, subject)
            .await
            .map_err(Rejection::from)
    }

    /// SECURITY: before a password is looked at: the attempt limits, then the
    /// lockouts of every key the subject has, so neither guessing nor a storm
    /// reaches bcrypt beyond the budget.
    pub async fn admit(
        &self,
        limits: LoginLimits<'_>,
        subject: &Subject<'_>,
    ) -> Result<(), Rejection> {
        self.count(limits.attempts, subject).await?;
        if limits.lockout.is_zero() {
            return Ok(());
        }
        let keys: Vec<String> = limits
            .failures
            .iter()
            .flat_map(|class| &class.limits)
            .map(|limit| subject.key(&limit.limit, self.limiter.ipv6_prefix()))
            .collect();
        let held = self.authenticator.lockout(keys).await.map_err(|e| {
            Rejection::CredentialsUnavailable {
                cause: e.to_string(),
            }
        })?;
        if let Some(lockout) = held {
            self.metrics.rate_limited("lockout");
            return Err(Rejection::LockedOut {
                retry_after: u64::try_from(lockout.until - crate::directory::now()).unwrap_or(1),
                key: lockout.key,
            });
        }
        Ok(())
    }

    /// A wrong password: counts against the failure limits and locks out the key
    /// that exceeded one.
    pub async fn failed(&self, limits: LoginLimits<'_>, subject: &Subject<'_>, request_id: &str) {
        if limits.lockout.is_zero() {
            return;
        }
        if let Some(exceeded) = self.limiter.count_failure(limits.failures, subject).await {
            self.lock_out(&exceeded, limits.lockout, request_id).await;
        }
    }

    /// Locks the key that exceeded a failed-login limit out for `duration`.
    async fn lock_out(&self, exceeded: &Exceeded, duration: Duration, request_id: &str) {
        let now = crate::directory::now();
        let lockout = Lockout {
            key: exceeded.key.clone(),
            until: now.saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)),
            reason: exceeded.to_string(),
            created: now,
        };
        let detail = format!(
            "`{}` locked out for {} after {}",
            lockout.key,
            humantime::format_duration(duration),
            lockout.reason
        );
        match self.authenticator.lock_out(lockout).await {
            Ok(()) => {
                self.metrics.lockout();
                tracing::warn!(request_id, "{detail}");
                self.audit.security("login-locked-out", Some(&detail));
            }
            // The failure limit still refuses this key's next failures; the lockout
            // itself is retried at the next one.
            Err(error) => {
                tracing::error!(request_id, error = %error, "cannot record a login lockout");
            }
        }
    }
}
