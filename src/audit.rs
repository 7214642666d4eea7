//! Last stage of the flow: one JSON line per decision, written off the request path.
//!
//! Requests hand finished records to a bounded channel and never wait: when the writer
//! falls behind, records are dropped and counted (`portcullis_audit_dropped_total`)
//! rather than slowing traffic. The writer appends to a file (reopened on SIGUSR1, for
//! log rotation) or to stdout. SECURITY: records carry ids, the canonical path and the
//! decision; never headers, query strings, bodies or credentials.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

/// One decision, as written.
#[derive(Debug, Serialize)]
pub struct DecisionRecord<'a> {
    pub time: String,
    pub kind: &'static str,
    pub request_id: &'a str,
    pub client: Option<&'a str>,
    /// Verified user and account ids; null for anonymous callers.
    pub user: Option<&'a str>,
    pub account: Option<&'a str>,
    pub method: &'a str,
    pub path: Option<&'a str>,
    pub route: Option<&'a str>,
    pub decision: &'static str,
    pub reason: Option<&'a str>,
    pub status: u16,
    pub latency_ms: f64,
    pub bytes: usize,
}

/// Something security-relevant that is not a request decision: certificate and
/// policy reloads, failed ones too, and changes made with the admin commands.
/// (Login outcomes are decision records on the route `portcullis:login`.)
#[derive(Debug, Serialize)]
pub struct SecurityEvent<'a> {
    pub time: String,
    pub kind: &'static str,
    /// What happened, e.g. `certificate-reloaded`.
    pub event: &'a str,
    /// Details for operators; never secrets.
    pub detail: Option<&'a str>,
    /// `cli` for a change made with an admin command; absent for the gateway's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'static str>,
    /// Who ran the admin command (see [`AdminEvent::operator`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<&'a str>,
}

/// A change made with an admin command (`portcullis token revoke`, `user passwd`, …).
/// The command stores it in the directory's `admin_events`; a running gateway takes
/// it from there and writes it to its audit stream (see [`Audit::admin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEvent {
    /// Unix seconds when the command made the change.
    pub at: i64,
    /// What happened, e.g. `tokens-revoked`.
    pub event: String,
    /// Whom or what it concerned; never secrets.
    pub detail: String,
    /// Who ran the command, as its environment reported (`SUDO_USER`, `USER`) and
    /// on which host.
    pub operator: String,
}

/// The sending side, shared by every request.
pub struct Audit {
    sender: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

/// The receiving side, owned by the writer task.
pub struct AuditWriter {
    receiver: mpsc::Receiver<String>,
    target: AuditTarget,
    metrics: Arc<Metrics>,
    /// Whether the last write failed (errors are logged once until one succeeds).
    failing: bool,
}

impl Audit {
    /// A channel holding at most `capacity` records not yet written.
    pub fn channel(
        capacity: usize,
        target: AuditTarget,
        metrics: Arc<Metrics>,
    ) -> (Self, AuditWriter) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let writer = AuditWriter {
            receiver,
            target,
            metrics: metrics.clone(),
            failing: false,
        };
        (Self { sender, metrics }, writer)
    }

    /// Queues a record; never blocks. A full channel drops it and counts the drop.
    pub fn record(&self, record: &impl Serialize) {
        // Sized for a decision record, so the line is not grown and copied as it is
        // written.
        let mut buffer = Vec::with_capacity(RECORD_CAPACITY);
        let line = serde_json::to_writer(&mut buffer, record)
            .ok()
            .and_then(|()| String::from_utf8(buffer).ok());
        let Some(line) = line else {
            self.metrics.audit_dropped();
            return;
        };
        if self.sender.try_send(line).is_err() {
            self.metrics.audit_dropped();
        }
    }
}

/// Bytes reserved for one audit line: a decision record is 250–400.
const RECORD_CAPACITY: usize = 512;

impl Audit {
    /// Queues a security event (see [`SecurityEvent`]).
    pub fn security(&self, event: &'static str, detail: Option<&str>) {
        self.record(&SecurityEvent {
            time: now(),
            kind: "security",
            event,
            detail,
            origin: None,
            operator: None,
        });
    }

    /// Queues a change made with an admin command, stamped with the time the command
    /// made it.
    pub fn admin(&self, event: &AdminEvent) {
        self.record(&SecurityEvent {
            time: rfc3339_millis(event.at.saturating_mul(1000)),
            kind: "security",
            event: &event.event,
            detail: Some(&event.detail),
            origin: Some("cli"),
            operator: Some(&event.operator),
        });
    }
}

/// Now, as RFC 3339 UTC with milliseconds: `2026-11-24T09:12:03.042Z`.
pub fn now() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let millis = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
    rfc3339_millis(millis)
}

/// A time in milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`: always
/// this width, so records sort by it as text. Outside the years 0000–9999, the
/// number itself. Written out by hand: every request's record has one, and a general
/// formatter costs several times as much.
fn rfc3339_millis(unix_millis: i64) -> String {
    let seconds = unix_millis.div_euclid(1000);
    let millis = unix_millis.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return unix_millis.to_string();
    }
    let fields = [
        (year, 4),
        (month, 2),
        (day, 2),
        (of_day / 3600, 2),
        (of_day / 60 % 60, 2),
        (of_day % 60, 2),
        (millis, 3),
    ];
    let mut text = Vec::with_capacity(24);
    for ((value, width), after) in fields.into_iter().zip(*b"--T::.Z") {
        // Every field is in range: not negative and below 10^width.
        let mut place = 10_i64.pow(width - 1);
        while place > 0 {
            text.push(b'0' + u8::try_from(value / place % 10).unwrap_or(0));
            place /= 10;
        }
        text.push(after);
    }
    String::from_utf8(text).unwrap_or_default()
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl AuditWriter {
    /// Writes records until `stop` resolves or every sender is gone, then drains the
    /// queue. SIGUSR1 reopens the file (after `logrotate` moved it).
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut rotate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
        let mut output = reopen(&self.target, "open").await;
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(()) = async {
                    match rotate.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    output = reopen(&self.target, "reopen").await;
                }
                line = self.receiver.recv() => {
                    let Some(line) = line else { break };
                    let batch = self.batch(line);
                    self.write(output.as_mut(), &batch).await;
                    // Let the next records gather: under load, requests then queue
                    // theirs without waking this thread, and one write takes many.
                    // A full batch means more are waiting: no pause then.
                    if batch.records < MAX_BATCH {
                        tokio::time::sleep(BATCH_PAUSE).await;
                    }
                }
            }
        }
        while let Ok(line) = self.receiver.try_recv() {
            let batch = self.batch(line);
            self.write(output.as_mut(), &batch).await;
        }
    }

    /// `first` and whatever else is already queued, up to [`MAX_BATCH`] records: one
    /// write for all of them. Under load the writer neither wakes nor writes once per
    /// request; when idle, a record is written as soon as it comes.
    fn batch(&mut self, first: String) -> Batch {
        let mut batch = Batch {
            bytes: Vec::with_capacity(first.len() + 1),
            records: 0,
        };
        batch.push(&first);
        while batch.records < MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(line) => batch.push(&line),
                Err(_) => break,
            }
        }
        batch
    }

    /// Writes records; a failure (disk full, say) loses them, is counted, and is
    /// logged once until a write succeeds again. Requests never wait for this.
    async fn write(&mut self, out: Option<&mut Output>, batch: &Batch) {
        match write_batch(out, batch).await {
            Ok(()) if self.failing => {
                tracing::info!("audit log writable again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(error) => {
                self.metrics.audit_write_errors(batch.records);
                if !self.failing {
                    tracing::error!(%error, "cannot write the audit log; records are lost until it can be (portcullis_audit_write_errors_total)");
                    self.failing = true;
                }
            }
        }
    }
}

async fn reopen(target: &AuditTarget, what: &str) -> Option<Output> {
    match open(target).await {
        Ok(output) => Some(output),
        Err(error) => {
            tracing::error!(%error, "cannot {what} the audit log; records are lost until it can be");
            None
        }
    }
}

type Output = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

async fn open(target: &AuditTarget) -> std::io::Result<Output> {
    match target {
        AuditTarget::Stdout => Ok(Box::new(tokio::io::stdout())),
        AuditTarget::File(path) => Ok(Box::new(open_append(path).await?)),
    }
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await
}

/// Records written at most at once.
const MAX_BATCH: u64 = 512;
/// After a write, the writer waits this long before it takes the next records.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Records as JSON lines, to be written at once.
struct Batch {
    bytes: Vec<u8>,
    records: u64,
}

impl Batch {
    fn push(&mut self, line: &str) {
        self.bytes.extend_from_slice(line.as_bytes());
        self.bytes.push(b'\n');
        self.records += 1;
    }
}

async fn write_batch(out: Option<&mut Output>, batch: &Batch) -> std::io::Result<()> {
    let Some(out) = out else {
        return Err(std::io::Error::other("the audit log is not open"));
    };
    out.write_all(&batch.bytes).await?;
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Line {
        n: usize,
    }

    /// The same text as the `time` crate writes, over the whole range of four-digit
    /// years: leap days, centuries, the epoch, the last millisecond of a day.
    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let format = time::format_description::parse(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z",
        )
        .expect("format");
        let expected = |millis: i64| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
                .expect("in range")
                .format(&format)
                .expect("formats")
        };
        let first = -62_167_219_200_000_i64; // 0000-01-01T00:00:00.000Z
        let last = 253_402_300_799_999_i64; // 9999-12-31T23:59:59.999Z
        let step = (last - first) / 200_003;
        let mut checked = 0;
        let mut millis = first;
        while millis <= last {
            assert_eq!(rfc3339_millis(millis), expected(millis), "{millis}");
            millis += step;
            checked += 1;
        }
        assert!(checked > 200_000);
        for (millis, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (1_795_511_523_042, "2026-11-24T09:12:03.042Z"),
            (first, "0000-01-01T00:00:00.000Z"),
            (last, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_millis(millis), text);
            assert_eq!(expected(millis), text);
        }
        // Beyond four-digit years: the number, not a malformed date.
        assert_eq!(rfc3339_millis(last + 1), (last + 1).to_string());
        assert_eq!(rfc3339_millis(first - 1), (first - 1).to_string());
        assert_eq!(rfc3339_millis(i64::MIN), i64::MIN.to_string());
        assert_eq!(rfc3339_millis(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (audit, _writer) = Audit::channel(2, AuditTarget::Stdout, metrics.clone());
        for n in 0..5 {
            audit.record(&Line { n });
        }
        let text = String::from_utf8(metrics.render()).expect("utf8");
        assert!(text.contains("portcullis_audit_dropped_total 3"), "{text}");
    }

    #[tokio::test]
    async fn queued_records_are_written_in_batches_whole_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (audit, writer) =
            Audit::channel(5_000, AuditTarget::File(path.clone()), metrics.clone());
        let count = 3 * MAX_BATCH as usize + 7;
        for n in 0..count {
            audit.record(&Line { n });
        }
        drop(audit);
        writer.run(std::future::pending()).await;
        let text = std::fs::read_to_string(&path).expect("audit file");
        let written: Vec<String> = text.lines().map(str::to_owned).collect();
        let expected: Vec<String> = (0..count).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
        assert_eq!(written, expected);
        let rendered = String::from_utf8(metrics.render()).expect("utf8");
        assert!(
            rendered.contains("portcullis_audit_dropped_total 0"),
            "{rendered}"
        );
    }
}
