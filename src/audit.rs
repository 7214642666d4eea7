//! Last stage of the flow: one JSON line per decision, written off the request path.
//!
//! Requests hand finished records to a bounded channel and never wait: when the writer
//! falls behind, records are dropped and counted (`portcullis_audit_dropped_total`)
//! rather than slowing traffic. The writer appends to a file (reopened on SIGUSR1, for
//! log rotation) or to stdout. SECURITY: records carry ids, the canonical path and the
//! decision; never headers, query strings, bodies or credentials.

use std::cell::Cell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use data_encoding::HEXLOWER;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

/// One decision, as written. Every request writes one, so it is written field by
/// field ([`DecisionRecord::write_json`]); the `Serialize` derive is the reference
/// that writing is tested against.
#[derive(Debug, Serialize)]
pub struct DecisionRecord<'a> {
    /// Milliseconds since the Unix epoch, written as RFC 3339 UTC (see [`now`]).
    #[serde(serialize_with = "time_text")]
    pub time: i64,
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
    /// Written as milliseconds with up to three decimals, under `latency_ms`.
    #[serde(rename = "latency_ms", serialize_with = "micros_as_millis")]
    pub latency_us: u64,
    pub bytes: usize,
}

fn time_text<S: serde::Serializer>(millis: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339_millis(*millis))
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn micros_as_millis<S: serde::Serializer>(micros: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(micros_to_millis(*micros))
}

/// Microseconds as fractional milliseconds. Exact up to 2^53 µs (285 years).
#[allow(clippy::cast_precision_loss)]
fn micros_to_millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl DecisionRecord<'_> {
    /// The record as one JSON line, without the newline: the bytes `serde_json`
    /// writes for it (a property test holds the two together), without serde's
    /// per-field calls, which cost several times as much.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        push_rfc3339_millis(out, self.time);
        out.extend_from_slice(b"\",\"kind\":");
        push_json_string(out, self.kind);
        out.extend_from_slice(b",\"request_id\":");
        push_json_string(out, self.request_id);
        for (key, value) in [
            (&b",\"client\":"[..], self.client),
            (b",\"user\":", self.user),
            (b",\"account\":", self.account),
            (b",\"method\":", Some(self.method)),
            (b",\"path\":", self.path),
            (b",\"route\":", self.route),
            (b",\"decision\":", Some(self.decision)),
            (b",\"reason\":", self.reason),
        ] {
            out.extend_from_slice(key);
            match value {
                Some(text) => push_json_string(out, text),
                None => out.extend_from_slice(b"null"),
            }
        }
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(number.format(self.status).as_bytes());
        out.extend_from_slice(b",\"latency_ms\":");
        push_millis(out, self.latency_us);
        out.extend_from_slice(b",\"bytes\":");
        out.extend_from_slice(number.format(self.bytes).as_bytes());
        out.push(b'}');
    }
}

/// `text` as a JSON string, escaped as `serde_json` escapes it: `"`, `\\` and the
/// control characters below U+0020, with the short forms where JSON has them.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let mut rest = text.as_bytes();
    while let Some(at) = first_to_escape(rest) {
        let (clean, escaped) = rest.split_at(at);
        out.extend_from_slice(clean);
        let Some((&byte, after)) = escaped.split_first() else {
            break;
        };
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                let mut digits = [0; 2];
                HEXLOWER.encode_mut(&[byte], &mut digits);
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&digits);
            }
        }
        rest = after;
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Where the first byte that [`push_json_string`] escapes is. Eight bytes at a time:
/// most text in a record needs no escaping, and a byte-by-byte search was half of
/// writing one.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Whether some byte of `word` is below `limit` (at most 0x80): exact, as the
    // first such byte borrows from no lower one.
    let has_below =
        |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGHS != 0;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        if has_below(word, 0x20)
            || has_below(word ^ (ONES * u64::from(b'"')), 1)
            || has_below(word ^ (ONES * u64::from(b'\\')), 1)
        {
            if let Some(at) = chunk.iter().position(|&byte| needs_escape(byte)) {
                return Some(offset + at);
            }
        }
        offset += 8;
    }
    let tail = chunks
        .remainder()
        .iter()
        .position(|&byte| needs_escape(byte));
    tail.map(|at| offset + at)
}

/// Microseconds as a JSON number of milliseconds, the text `serde_json` writes for
/// the same `f64`: `0.0`, `0.5`, `12.345`. Latencies of 10^12 µs (11 days) and
/// more, where that text may turn to exponents, go through `serde_json` itself.
fn push_millis(out: &mut Vec<u8>, micros: u64) {
    if micros >= 1_000_000_000_000 {
        if serde_json::to_writer(&mut *out, &micros_to_millis(micros)).is_err() {
            out.extend_from_slice(b"null");
        }
        return;
    }
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    let fraction = micros % 1000;
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10].map(|digit| {
        // Below 10.
        b'0' + u8::try_from(digit).unwrap_or(0)
    });
    let significant = match digits {
        [_, b'0', b'0'] => 1,
        [_, _, b'0'] => 2,
        _ => 3,
    };
    out.extend_from_slice(digits.get(..significant).unwrap_or(b"0"));
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
    /// Records as JSON text, one line each without its newline.
    sender: mpsc::Sender<Vec<u8>>,
    metrics: Arc<Metrics>,
}

/// The receiving side, owned by the writer task.
pub struct AuditWriter {
    receiver: mpsc::Receiver<Vec<u8>>,
    /// To wake the writer's thread with; weak, so the channel closes (and the thread
    /// ends) once every [`Audit`] is gone.
    wake: mpsc::WeakSender<Vec<u8>>,
    /// The last batch's buffer, kept for the next one.
    spare: Vec<u8>,
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
            wake: sender.downgrade(),
            spare: Vec::new(),
            target,
            metrics: metrics.clone(),
            failing: false,
        };
        (Self { sender, metrics }, writer)
    }

    /// Queues a record; never blocks. A full channel drops it and counts the drop.
    pub fn record(&self, record: &impl Serialize) {
        let mut line = Vec::with_capacity(RECORD_CAPACITY);
        match serde_json::to_writer(&mut line, record) {
            Ok(()) => self.queue(line),
            Err(_) => self.metrics.audit_dropped(),
        }
    }

    /// Queues a request's decision, like [`Audit::record`].
    pub fn decision(&self, record: &DecisionRecord<'_>) {
        // Sized for a decision record, so the line is not grown and copied as it is
        // written.
        let mut line = Vec::with_capacity(RECORD_CAPACITY);
        record.write_json(&mut line);
        self.queue(line);
    }

    fn queue(&self, line: Vec<u8>) {
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
    rfc3339_millis(now_millis())
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A time in milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`: always
/// this width, so records sort by it as text. Outside the years 0000–9999, the
/// number itself.
fn rfc3339_millis(unix_millis: i64) -> String {
    let mut text = Vec::with_capacity(24);
    push_rfc3339_millis(&mut text, unix_millis);
    String::from_utf8(text).unwrap_or_default()
}

/// [`rfc3339_millis`], appended to `out`. Written out by hand: every request's
/// record has one, and a general formatter costs several times as much. Each
/// thread keeps the date and time of the last second it wrote, so the records of
/// one second write only their milliseconds.
fn push_rfc3339_millis(out: &mut Vec<u8>, unix_millis: i64) {
    thread_local! {
        static LAST_SECOND: Cell<(i64, Option<[u8; 19]>)> = const { Cell::new((i64::MIN, None)) };
    }
    let seconds = unix_millis.div_euclid(1000);
    let prefix = LAST_SECOND.with(|last| match last.get() {
        (cached, text) if cached == seconds => text,
        _ => {
            let text = second_text(seconds);
            last.set((seconds, text));
            text
        }
    });
    let Some(prefix) = prefix else {
        out.extend_from_slice(itoa::Buffer::new().format(unix_millis).as_bytes());
        return;
    };
    out.extend_from_slice(&prefix);
    out.push(b'.');
    push_digits(out, unix_millis.rem_euclid(1000), 3);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since the Unix epoch; `None` outside the years
/// 0000–9999.
fn second_text(seconds: i64) -> Option<[u8; 19]> {
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    if !(0..=9999).contains(&year) {
        return None;
    }
    let of_day = seconds.rem_euclid(86_400);
    let mut text = Vec::with_capacity(19);
    push_digits(&mut text, year, 4);
    for (separator, value) in [
        (b'-', month),
        (b'-', day),
        (b'T', of_day / 3600),
        (b':', of_day / 60 % 60),
        (b':', of_day % 60),
    ] {
        text.push(separator);
        push_digits(&mut text, value, 2);
    }
    text.try_into().ok()
}

/// `value`, which is not negative and below 10^`width`, in exactly `width` digits.
fn push_digits(out: &mut Vec<u8>, value: i64, width: u32) {
    let mut place = 10_i64.pow(width.saturating_sub(1));
    while place > 0 {
        out.push(b'0' + u8::try_from(value / place % 10).unwrap_or(0));
        place /= 10;
    }
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
    /// Starts writing on a thread of its own. Writes are plain blocking writes there:
    /// no runtime hands each one to a blocking pool and back, and requests never wait
    /// for them.
    pub fn start(self) -> std::io::Result<RunningWriter> {
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            wake: self.wake.clone(),
        });
        let thread = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn({
                let control = control.clone();
                move || self.run(&control)
            })?;
        Ok(RunningWriter { control, thread })
    }

    /// Writes records until told to stop or every [`Audit`] is gone, then drains the
    /// queue.
    fn run(mut self, control: &Control) {
        let mut output = reopen(&self.target, "open");
        while let Some(first) = self.receiver.blocking_recv() {
            if control.reopen.swap(false, Ordering::AcqRel) {
                output = reopen(&self.target, "reopen");
            }
            let batch = self.batch(first);
            let records = batch.records;
            self.write(output.as_mut(), batch);
            if control.stop.load(Ordering::Acquire) {
                break;
            }
            // Let the next records gather: under load, requests then queue theirs
            // without waking this thread, and one write takes many. A full batch
            // means more are waiting: no pause then.
            if records > 0 && records < MAX_BATCH {
                std::thread::sleep(BATCH_PAUSE);
            }
        }
        while let Ok(line) = self.receiver.try_recv() {
            let batch = self.batch(line);
            self.write(output.as_mut(), batch);
        }
    }

    /// `first` and whatever else is already queued, up to [`MAX_BATCH`] records: one
    /// write for all of them. Under load the writer neither wakes nor writes once per
    /// request; when idle, a record is written as soon as it comes. Wake-ups (empty
    /// lines) are left out.
    fn batch(&mut self, first: Vec<u8>) -> Batch {
        let mut bytes = std::mem::take(&mut self.spare);
        bytes.clear();
        let mut batch = Batch { bytes, records: 0 };
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
    /// logged once until a write succeeds again. Requests never wait for this. A
    /// batch of wake-ups alone writes nothing.
    fn write(&mut self, out: Option<&mut Output>, batch: Batch) {
        if batch.records > 0 {
            match write_batch(out, &batch) {
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
        // The next batch fills this buffer again, unless one record made it large.
        if batch.bytes.capacity() <= MAX_SPARE {
            self.spare = batch.bytes;
        }
    }
}

/// What the writer's thread is told from outside, with a way to wake it.
struct Control {
    stop: AtomicBool,
    reopen: AtomicBool,
    /// Sends an empty line: the writer wakes, sees the flags and writes nothing.
    wake: mpsc::WeakSender<Vec<u8>>,
}

impl Control {
    fn wake(&self) {
        // A full queue needs no wake-up: the writer has records to take. A closed
        // one needs none either: the writer is draining it and ends.
        if let Some(sender) = self.wake.upgrade() {
            let _ = sender.try_send(Vec::new());
        }
    }
}

/// The audit writer's thread.
pub struct RunningWriter {
    control: Arc<Control>,
    thread: std::thread::JoinHandle<()>,
}

impl RunningWriter {
    /// Reopens the file before the next write (after `logrotate` moved it).
    pub fn reopen(&self) {
        self.control.reopen.store(true, Ordering::Release);
        self.control.wake();
    }

    /// Writes what is queued, then returns once the thread has ended. Blocks.
    pub fn finish(self) {
        self.control.stop.store(true, Ordering::Release);
        self.control.wake();
        if self.thread.join().is_err() {
            tracing::error!("the audit writer panicked; queued records are lost");
        }
    }
}

fn reopen(target: &AuditTarget, what: &str) -> Option<Output> {
    match open(target) {
        Ok(output) => Some(output),
        Err(error) => {
            tracing::error!(%error, "cannot {what} the audit log; records are lost until it can be");
            None
        }
    }
}

type Output = Box<dyn std::io::Write + Send>;

fn open(target: &AuditTarget) -> std::io::Result<Output> {
    match target {
        AuditTarget::Stdout => Ok(Box::new(std::io::stdout())),
        AuditTarget::File(path) => Ok(Box::new(open_append(path)?)),
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Records written at most at once.
const MAX_BATCH: u64 = 512;
/// The largest batch buffer kept for the next batch: 512 decision records fit.
const MAX_SPARE: usize = 1 << 20;
/// After a write, the writer waits this long before it takes the next records.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Records as JSON lines, to be written at once.
struct Batch {
    bytes: Vec<u8>,
    records: u64,
}

impl Batch {
    /// Appends a line; an empty one is a wake-up, not a record.
    fn push(&mut self, line: &[u8]) {
        if line.is_empty() {
            return;
        }
        self.bytes.extend_from_slice(line);
        self.bytes.push(b'\n');
        self.records += 1;
    }
}

fn write_batch(out: Option<&mut Output>, batch: &Batch) -> std::io::Result<()> {
    let Some(out) = out else {
        return Err(std::io::Error::other("the audit log is not open"));
    };
    out.write_all(&batch.bytes)?;
    out.flush()
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

    /// Text that needs every kind of escape, and some that needs none.
    fn awkward_text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            proptest::prelude::any::<String>(),
            "[\\x00-\\x1f\"\\\\\\x7f !#-\\[\\]-~é😀]{0,40}",
            "[a-z/]{0,30}[\\x00-\\x1f\"\\\\][a-z/]{0,30}",
        ]
    }

    fn optional_text() -> impl proptest::strategy::Strategy<Value = Option<String>> {
        proptest::option::of(awkward_text())
    }

    proptest::proptest! {
        /// Eight bytes at a time finds the byte a byte-by-byte search finds.
        #[test]
        fn the_first_byte_to_escape_is_found_wherever_it_is(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            clean in proptest::collection::vec(0x20_u8..0xff, 0..64),
            byte in proptest::prelude::any::<u8>(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let expected = |bytes: &[u8]| bytes.iter().position(|&byte| needs_escape(byte));
            proptest::prop_assert_eq!(first_to_escape(&bytes), expected(&bytes));
            let mut one = clean.clone();
            one.insert(at.index(clean.len() + 1), byte);
            proptest::prop_assert_eq!(first_to_escape(&one), expected(&one));
        }

        /// The hand-written line is, byte for byte, what serde_json writes.
        #[test]
        fn decision_lines_are_what_serde_json_writes(
            time in -70_000_000_000_000_i64..260_000_000_000_000,
            texts in proptest::collection::vec(optional_text(), 6),
            required in proptest::collection::vec(awkward_text(), 2),
            status in proptest::prelude::any::<u16>(),
            latency_us in proptest::prop_oneof![
                0_u64..5_000_000,
                proptest::prelude::any::<u64>(),
            ],
            bytes in proptest::prelude::any::<usize>(),
        ) {
            let text = |i: usize| texts.get(i).and_then(Option::as_deref);
            let record = DecisionRecord {
                time,
                kind: "decision",
                request_id: required.first().map_or("", String::as_str),
                client: text(0),
                user: text(1),
                account: text(2),
                method: required.get(1).map_or("", String::as_str),
                path: text(3),
                route: text(4),
                decision: "allowed",
                reason: text(5),
                status,
                latency_us,
                bytes,
            };
            let mut line = Vec::new();
            record.write_json(&mut line);
            let expected = serde_json::to_vec(&record).expect("serializes");
            proptest::prop_assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn decision_lines_escape_and_round_numbers_as_serde_json_does() {
        let record = DecisionRecord {
            time: 1_795_511_523_042,
            kind: "decision",
            request_id: "r\"1\\\u{1}\n\t\u{8}\u{c}\r\u{1f}\u{7f}é",
            client: None,
            user: Some("7"),
            account: Some("3"),
            method: "GET",
            path: Some("/api/v3_0/sensors"),
            route: None,
            decision: "refused",
            reason: None,
            status: 401,
            latency_us: 1_000,
            bytes: 0,
        };
        let mut line = Vec::new();
        record.write_json(&mut line);
        assert_eq!(
            String::from_utf8(line).expect("utf8"),
            concat!(
                r#"{"time":"2026-11-24T09:12:03.042Z","kind":"decision","#,
                r#""request_id":"r\"1\\\u0001\n\t\b\f\r\u001f"#,
                "\u{7f}é\",",
                r#""client":null,"user":"7","account":"3","method":"GET","#,
                r#""path":"/api/v3_0/sensors","route":null,"decision":"refused","#,
                r#""reason":null,"status":401,"latency_ms":1.0,"bytes":0}"#
            )
        );
        for (micros, text) in [
            (0, "0.0"),
            (1, "0.001"),
            (10, "0.01"),
            (120, "0.12"),
            (123_456, "123.456"),
            (999_999_999_999, "999999999.999"),
        ] {
            let mut out = Vec::new();
            push_millis(&mut out, micros);
            assert_eq!(String::from_utf8(out).expect("utf8"), text);
        }
    }

    /// One thread writes many records in one second: the date and time of day it
    /// keeps for that second must follow the clock across seconds, days and years.
    #[test]
    fn the_kept_second_follows_the_clock() {
        for (millis, text) in [
            (1_795_511_523_042, "2026-11-24T09:12:03.042Z"),
            (1_795_511_523_999, "2026-11-24T09:12:03.999Z"),
            (1_795_511_524_000, "2026-11-24T09:12:04.000Z"),
            (1_795_511_523_001, "2026-11-24T09:12:03.001Z"),
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
            (1_798_761_600_000, "2027-01-01T00:00:00.000Z"),
            (253_402_300_800_000, "253402300800000"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_millis(millis), text);
        }
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

    #[test]
    fn a_reopen_moves_later_records_to_the_new_file_and_writes_no_wake_ups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (audit, writer) = Audit::channel(100, AuditTarget::File(path.clone()), metrics);
        let running = writer.start().expect("writer");
        let lines = |path: &Path| -> Vec<String> {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        audit.record(&Line { n: 1 });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while lines(&path).is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing written");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::rename(&path, &rotated).expect("rotate");
        running.reopen();
        while !path.exists() {
            assert!(std::time::Instant::now() < deadline, "not reopened");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        audit.record(&Line { n: 2 });
        audit.record(&Line { n: 3 });
        running.finish();
        assert_eq!(lines(&rotated), [r#"{"n":1}"#]);
        assert_eq!(lines(&path), [r#"{"n":2}"#, r#"{"n":3}"#]);
    }

    #[test]
    fn the_writer_ends_on_its_own_once_every_sender_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (audit, writer) = Audit::channel(100, AuditTarget::File(path.clone()), metrics);
        let running = writer.start().expect("writer");
        audit.record(&Line { n: 1 });
        drop(audit);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !running.thread.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the writer runs on");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        running.finish();
        let text = std::fs::read_to_string(&path).expect("audit file");
        assert_eq!(text, "{\"n\":1}\n");
    }

    #[test]
    fn queued_records_are_written_in_batches_whole_and_in_order() {
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
        writer.start().expect("writer").finish();
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
