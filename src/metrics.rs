//! Prometheus metrics: what the gateway decided, how long it took, and the state of
//! its certificate. Served on the admin listener (`server/admin.rs`).
//!
//! Labels are bounded: route ids come from configuration, statuses and decisions from
//! fixed sets. Nothing request-specific (paths, ids, addresses) becomes a label.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The gateway's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    certificate_expiry: IntGauge,
    certificate_reloads: IntCounterVec,
    certificate_reloaded_at: IntGauge,
    audit_dropped: prometheus::IntCounter,
    audit_write_errors: prometheus::IntCounter,
    /// `token_checks_total`'s series, one per result, looked up once at start: they
    /// count nearly every proxied request, and a lookup by label hashes the label
    /// each time.
    token_checks: TokenCheckCounters,
    logins: IntCounterVec,
    second_factors: IntCounterVec,
    policy_reloads: IntCounterVec,
    policy_reloaded_at: IntGauge,
    rate_limited: IntCounterVec,
    rate_limit_store_errors: prometheus::IntCounter,
    rate_limit_keys: IntGauge,
    lockouts: prometheus::IntCounter,
    password_checks: prometheus::IntCounter,
}

/// What a token check came to, for `token_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Found in the cache of verified tokens (the hot path).
    Cached,
    /// Verified in full (cold, sha256_crypt).
    Verified,
    /// Refused (401).
    Refused,
    /// A store did not answer (503).
    Unavailable,
}

struct TokenCheckCounters {
    cached: prometheus::IntCounter,
    verified: prometheus::IntCounter,
    refused: prometheus::IntCounter,
    unavailable: prometheus::IntCounter,
}

impl TokenCheckCounters {
    fn of(vec: &IntCounterVec) -> Self {
        Self {
            cached: vec.with_label_values(&["cached"]),
            verified: vec.with_label_values(&["verified"]),
            refused: vec.with_label_values(&["refused"]),
            unavailable: vec.with_label_values(&["unavailable"]),
        }
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Permitted and answered by the backend.
    Allowed,
    /// Refused by the gateway before any backend was contacted.
    Refused,
    /// Permitted, but the backend failed (502/504).
    Failed,
    /// The login endpoint issued a token.
    TokenIssued,
    /// A web-login page answered by the gateway.
    Page,
}

impl Decision {
    pub fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::TokenIssued => "token-issued",
            Self::Page => "page",
        }
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by route, decision and status."),
            &["route", "decision", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request to the end of the response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let certificate_expiry = IntGauge::new(
            "certificate_expiry_timestamp_seconds",
            "When the served certificate expires (Unix time).",
        )?;
        let certificate_reloads = IntCounterVec::new(
            Opts::new(
                "certificate_reloads_total",
                "Certificate reload attempts by result.",
            ),
            &["result"],
        )?;
        let certificate_reloaded_at = IntGauge::new(
            "certificate_reload_timestamp_seconds",
            "When the served certificate was last replaced (Unix time; 0: never).",
        )?;
        let audit_dropped = prometheus::IntCounter::new(
            "audit_dropped_total",
            "Audit records dropped because the writer fell behind.",
        )?;
        let audit_write_errors = prometheus::IntCounter::new(
            "audit_write_errors_total",
            "Audit records that could not be written (disk full, file unreachable); lost.",
        )?;
        let token_checks = IntCounterVec::new(
            Opts::new(
                "token_checks_total",
                "Token checks by result: cached (hot path), verified (cold, sha256_crypt), \
                 refused (401) or unavailable (503, a store did not answer).",
            ),
            &["result"],
        )?;
        let logins = IntCounterVec::new(
            Opts::new(
                "logins_total",
                "Password logins by result: issued (a token), session (the web login), refused or unavailable.",
            ),
            &["result"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "policy_reloads_total",
                "Policy reload attempts by result (a failure keeps the last good policy).",
            ),
            &["result"],
        )?;
        let policy_reloaded_at = IntGauge::new(
            "policy_reload_timestamp_seconds",
            "When the policy in force was loaded (Unix time).",
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused with 429 by limit class (login lockouts included).",
            ),
            &["class"],
        )?;
        let rate_limit_store_errors = prometheus::IntCounter::new(
            "rate_limit_store_errors_total",
            "Rate-limit checks Redis could not answer (then `on_store_error` applies).",
        )?;
        let rate_limit_keys = IntGauge::new(
            "rate_limit_keys",
            "Keys with a budget in this process's rate-limit tables (after housekeeping).",
        )?;
        let lockouts = prometheus::IntCounter::new(
            "login_lockouts_total",
            "Login lockouts started after too many failed attempts.",
        )?;
        let password_checks = prometheus::IntCounter::new(
            "password_checks_total",
            "Password hash verifications (bcrypt or argon2) run for logins: one per attempt, \
             whether the email names a user or not.",
        )?;
        registry.register(Box::new(password_checks.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(rate_limit_store_errors.clone()))?;
        registry.register(Box::new(rate_limit_keys.clone()))?;
        registry.register(Box::new(lockouts.clone()))?;
        registry.register(Box::new(policy_reloads.clone()))?;
        registry.register(Box::new(policy_reloaded_at.clone()))?;
        registry.register(Box::new(token_checks.clone()))?;
        registry.register(Box::new(logins.clone()))?;
        let second_factors = IntCounterVec::new(
            prometheus::Opts::new(
                "second_factors_total",
                "Second-factor codes checked on the web login, by result: passed or refused.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(second_factors.clone()))?;
        registry.register(Box::new(audit_dropped.clone()))?;
        registry.register(Box::new(audit_write_errors.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        registry.register(Box::new(certificate_reloads.clone()))?;
        registry.register(Box::new(certificate_reloaded_at.clone()))?;
        let token_checks = TokenCheckCounters::of(&token_checks);
        Ok(Self {
            registry,
            requests,
            duration,
            certificate_expiry,
            certificate_reloads,
            certificate_reloaded_at,
            audit_dropped,
            audit_write_errors,
            token_checks,
            logins,
            second_factors,
            policy_reloads,
            policy_reloaded_at,
            rate_limited,
            rate_limit_store_errors,
            rate_limit_keys,
            lockouts,
            password_checks,
        })
    }

    /// Records a policy (re)load: `true` when the new policy is in force.
    pub fn policy_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.policy_reloads.with_label_values(&[result]).inc();
        if success {
            self.policy_reloaded_at.set(unix_now());
        }
    }

    /// Counts one request refused with 429 under a limit class.
    pub fn rate_limited(&self, class: &str) {
        self.rate_limited.with_label_values(&[class]).inc();
    }

    /// Counts one rate-limit check Redis did not answer.
    pub fn rate_limit_store_error(&self) {
        self.rate_limit_store_errors.inc();
    }

    /// Records how many keys the local rate-limit tables hold.
    pub fn rate_limit_keys(&self, keys: usize) {
        self.rate_limit_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Counts one login lockout.
    pub fn lockout(&self) {
        self.lockouts.inc();
    }

    /// Counts one token check under its result.
    pub fn token_check(&self, check: TokenCheck) {
        let counters = &self.token_checks;
        match check {
            TokenCheck::Cached => &counters.cached,
            TokenCheck::Verified => &counters.verified,
            TokenCheck::Refused => &counters.refused,
            TokenCheck::Unavailable => &counters.unavailable,
        }
        .inc();
    }

    /// Counts one login: `issued`, `refused` or `unavailable`.
    pub fn login(&self, result: &str) {
        self.logins.with_label_values(&[result]).inc();
    }

    /// A second-factor code was checked: `passed` or `refused`.
    pub fn second_factor(&self, result: &str) {
        self.second_factors.with_label_values(&[result]).inc();
    }

    /// Counts one finished request; `status` is `None` when no response was written
    /// (label `0`).
    pub fn request(
        &self,
        route: &str,
        decision: Decision,
        status: Option<http::StatusCode>,
        seconds: f64,
    ) {
        let status = status.as_ref().map_or("0", http::StatusCode::as_str);
        self.requests
            .with_label_values(&[route, decision.label(), status])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }

    /// Records the certificate now being served.
    pub fn certificate_served(&self, expires_unix: i64) {
        self.certificate_expiry.set(expires_unix);
    }

    /// Records a reload attempt; `Some(expiry)` when the new certificate is served.
    pub fn certificate_reload(&self, outcome: Option<i64>) {
        match outcome {
            Some(expires_unix) => {
                self.certificate_reloads
                    .with_label_values(&["success"])
                    .inc();
                self.certificate_served(expires_unix);
                self.certificate_reloaded_at.set(unix_now());
            }
            None => self
                .certificate_reloads
                .with_label_values(&["failure"])
                .inc(),
        }
    }

    /// Counts one password hash verification.
    pub fn password_check(&self) {
        self.password_checks.inc();
    }

    /// Counts an audit record that could not be queued.
    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// Counts audit records that could not be written.
    pub fn audit_write_errors(&self, records: u64) {
        self.audit_write_errors.inc_by(records);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format; an error leaves it empty.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_reloads_appear_in_the_exposition() {
        let metrics = Metrics::new().expect("metrics");
        metrics.request("api", Decision::Allowed, Some(http::StatusCode::OK), 0.002);
        metrics.request("api", Decision::Allowed, Some(http::StatusCode::OK), 0.004);
        metrics.request(
            "-",
            Decision::Refused,
            Some(http::StatusCode::NOT_FOUND),
            0.0001,
        );
        // A connection that ended before any response was written.
        metrics.request("-", Decision::Refused, None, 0.0001);
        metrics.certificate_reload(None);
        metrics.certificate_reload(Some(1_900_000_000));
        let text = String::from_utf8(metrics.render()).expect("utf8");
        assert!(
            text.contains(
                r#"portcullis_requests_total{decision="allowed",route="api",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"portcullis_requests_total{decision="refused",route="-",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"portcullis_requests_total{decision="refused",route="-",status="0"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_request_duration_seconds_count{route="api"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_certificate_reloads_total{result="failure"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("portcullis_certificate_expiry_timestamp_seconds 1900000000"),
            "{text}"
        );
        assert!(
            !text.contains("portcullis_certificate_reload_timestamp_seconds 0\n"),
            "{text}"
        );
    }

    #[test]
    fn token_checks_count_under_their_result() {
        let metrics = Metrics::new().expect("metrics");
        for check in [
            TokenCheck::Cached,
            TokenCheck::Cached,
            TokenCheck::Verified,
            TokenCheck::Refused,
            TokenCheck::Cached,
        ] {
            metrics.token_check(check);
        }
        let text = String::from_utf8(metrics.render()).expect("utf8");
        for (result, count) in [
            ("cached", 3),
            ("verified", 1),
            ("refused", 1),
            ("unavailable", 0),
        ] {
            assert!(
                text.contains(&format!(
                    "portcullis_token_checks_total{{result=\"{result}\"}} {count}\n"
                )),
                "{text}"
            );
        }
    }
}
