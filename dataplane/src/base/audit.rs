//! The audit sink: one JSON line per record, written to standard output (for the cluster's
//! log collector) and sent as OpenTelemetry log records (over OTLP) by a thread of its
//! own, and the latest records kept in a bounded ring (the admin port's `/audit`).
//!
//! A request adds its line under one lock and wakes nobody: the writer takes what is
//! pending every [`FLUSH_EVERY`], so a busy gateway pays for a write per batch, not per
//! request, and then moves the lines it wrote into the ring (`/audit` shows what was
//! written, up to one beat late), copying each for the controller's live log. What is
//! pending is bounded: past [`Settings::pending`] lines a record is
//! counted as dropped (`tollgate_audit_records_dropped_total`) rather than held, so a
//! stalled log collector cannot grow the process without end. On shutdown what is
//! pending is written before the process exits.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;

/// Line buffers kept for reuse at most.
const SPARE: usize = 256;

/// Who a record is about, as every kind of record names it: the key by its object
/// (`namespace`, `key`; never its value) and the key's owner. Empty texts are `null`.
#[derive(serde::Serialize, Default)]
pub struct Owner<'a> {
    pub key: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub team: Option<&'a str>,
    pub customer: Option<&'a str>,
    pub user: Option<&'a str>,
}

impl<'a> Owner<'a> {
    /// The key `<namespace>/<name>` and its owner's team, customer and user.
    pub fn new(key: &'a str, team: &'a str, customer: &'a str, user: &'a str) -> Self {
        let set = |s: &'a str| Some(s).filter(|s| !s.is_empty());
        let (namespace, key) = key
            .split_once('/')
            .map_or((None, None), |(ns, k)| (Some(ns), Some(k)));
        Self {
            key,
            namespace,
            team: set(team),
            customer: set(customer),
            user: set(user),
        }
    }
}

/// A duration as records write it: milliseconds, to the microsecond.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The event name of audit records sent as OpenTelemetry log records.
pub const EVENT: &str = "tollgate.audit";

/// How often the writer takes what is pending.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Where records go, and how many are kept.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Write each record to standard output.
    pub stdout: bool,
    /// Records kept for `/audit` (0: none).
    pub ring: usize,
    /// Records waiting for the writer at most.
    pub pending: usize,
    /// Records waiting to go to the controller (its live request log) at most: past it
    /// the oldest go (0: none are sent).
    pub forward: usize,
}

#[derive(Default)]
struct Inner {
    ring: VecDeque<String>,
    pending: Vec<String>,
    /// For the controller, taken by the usage reporter.
    forward: VecDeque<String>,
    /// Buffers of lines that left the ring, for the next records: in a steady state a
    /// record allocates nothing. (Freed lines went back to the system at once and were
    /// faulted in again, a few hundred page faults a second under load.)
    spare: Vec<String>,
    /// The writer has stopped: what comes after is written at once by its caller.
    closed: bool,
}

/// The process's audit sink. Cheap to share (`Arc`).
pub struct Auditor {
    settings: Settings,
    inner: Mutex<Inner>,
    written: IntCounter,
    dropped: IntCounter,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: std::sync::atomic::AtomicBool,
    /// Each record also goes out as a log record (its body the line).
    otlp: Option<Arc<tollgate_telemetry::Telemetry>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// A sink with `settings`, counting in `written` and `dropped`, and sending log
    /// records with `otlp` (when it exports logs); with `stdout` or `otlp`, its writer
    /// thread is started. `None` when records go nowhere.
    pub fn start(
        settings: Settings,
        written: IntCounter,
        dropped: IntCounter,
        otlp: Option<Arc<tollgate_telemetry::Telemetry>>,
    ) -> Option<Arc<Self>> {
        let otlp = otlp.filter(|t| t.logs());
        if !settings.stdout && otlp.is_none() && settings.ring == 0 && settings.forward == 0 {
            return None;
        }
        let writes = settings.stdout || otlp.is_some();
        let this = Arc::new(Self {
            settings,
            inner: Mutex::new(Inner::default()),
            written,
            dropped,
            writer: Mutex::new(None),
            stop: std::sync::atomic::AtomicBool::new(false),
            otlp,
        });
        if writes {
            let sink = this.clone();
            let stdout = settings.stdout;
            let handle = std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || {
                    let mut out = stdout.then(std::io::stdout);
                    sink.write_loop(out.as_mut())
                })
                .ok();
            if handle.is_none() {
                tracing::error!(
                    "the audit writer could not start; audit records go to the ring only"
                );
            }
            *super::lock(&this.writer) = handle;
        }
        Some(this)
    }

    /// Adds one record (a JSON object) to the sinks.
    pub fn emit(&self, record: &impl serde::Serialize) {
        let spare = super::lock(&self.inner).spare.pop();
        let mut line = spare.map_or_else(|| Vec::with_capacity(1024), String::into_bytes);
        line.clear();
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        // serde_json writes UTF-8 only.
        let Ok(line) = String::from_utf8(line) else {
            return;
        };
        let mut late = None;
        {
            let mut inner = super::lock(&self.inner);
            if !self.writes() {
                self.keep(&mut inner, line);
            } else if inner.closed {
                late = Some(line);
            } else if inner.pending.len() >= self.settings.pending {
                self.dropped.inc();
            } else {
                inner.pending.push(line);
            }
        }
        if let Some(line) = late {
            // After shutdown (a request that outlived the drain): written here.
            if let Some(t) = &self.otlp {
                t.log(EVENT, &line);
            }
            if !self.settings.stdout || writeln!(std::io::stdout().lock(), "{line}").is_ok() {
                self.written.inc();
            }
        }
    }

    /// Whether records go through the writer thread (to stdout or OTLP).
    fn writes(&self) -> bool {
        self.settings.stdout || self.otlp.is_some()
    }

    /// Puts `line` in the ring, the oldest out when it is full, and in the lines for the
    /// controller.
    fn keep(&self, inner: &mut Inner, line: String) {
        if self.settings.forward > 0 {
            if inner.forward.len() == self.settings.forward {
                inner.forward.pop_front();
            }
            inner.forward.push_back(line.clone());
        }
        if self.settings.ring == 0 {
            return;
        }
        if inner.ring.len() == self.settings.ring
            && let Some(old) = inner.ring.pop_front()
            && inner.spare.len() < SPARE
        {
            inner.spare.push(old);
        }
        inner.ring.push_back(line);
    }

    /// At most `max` records and `max_bytes` of them for the controller, oldest first,
    /// taken. A record longer than `max_bytes` alone is dropped (an MCP call's logged
    /// arguments can be that long): a batch must stay within what the controller reads.
    pub fn take_forward(&self, max: usize, max_bytes: usize) -> Vec<String> {
        let mut inner = super::lock(&self.inner);
        let (mut out, mut bytes) = (Vec::new(), 0);
        while out.len() < max {
            let Some(len) = inner.forward.front().map(String::len) else {
                break;
            };
            if len > max_bytes {
                inner.forward.pop_front();
                continue;
            }
            if bytes + len > max_bytes {
                break;
            }
            bytes += len;
            out.extend(inner.forward.pop_front());
        }
        out
    }

    /// The latest `limit` records kept, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<String> {
        let inner = super::lock(&self.inner);
        let skip = inner.ring.len().saturating_sub(limit);
        inner.ring.iter().skip(skip).cloned().collect()
    }

    fn write_loop<W: Write>(&self, mut out: Option<&mut W>) {
        // One buffer for every batch, kept.
        let mut text = String::new();
        loop {
            let stopping = self.stop.load(std::sync::atomic::Ordering::Acquire);
            let batch = {
                let mut inner = super::lock(&self.inner);
                inner.closed = stopping;
                std::mem::take(&mut inner.pending)
            };
            if !batch.is_empty() {
                if let Some(t) = &self.otlp {
                    for line in &batch {
                        t.log(EVENT, line);
                    }
                }
                text.clear();
                for line in &batch {
                    text.push_str(line);
                    text.push('\n');
                }
                let written = match out.as_mut() {
                    Some(out) => out.write_all(text.as_bytes()).and_then(|()| out.flush()),
                    None => Ok(()),
                };
                match written {
                    Ok(()) => self.written.inc_by(batch.len() as u64),
                    Err(e) => {
                        self.dropped.inc_by(batch.len() as u64);
                        tracing::warn!(error = %e, records = batch.len(), "audit records could not be written");
                    }
                }
                let mut inner = super::lock(&self.inner);
                for line in batch {
                    self.keep(&mut inner, line);
                }
            }
            if stopping {
                return;
            }
            std::thread::park_timeout(FLUSH_EVERY);
        }
    }

    /// Writes what is pending and stops the writer; records made later are written by
    /// whoever makes them.
    pub fn close(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let handle = super::lock(&self.writer).take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> (IntCounter, IntCounter) {
        (
            IntCounter::new("w", "w").unwrap(),
            IntCounter::new("d", "d").unwrap(),
        )
    }

    #[test]
    fn the_ring_keeps_the_latest_records() {
        let (w, d) = counters();
        let settings = Settings {
            stdout: false,
            ring: 3,
            pending: 10,
            forward: 2,
        };
        let a = Auditor::start(settings, w, d, None).unwrap();
        for i in 0..5 {
            a.emit(&serde_json::json!({ "n": i }));
        }
        assert_eq!(a.recent(10), [r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]);
        assert_eq!(a.recent(1), [r#"{"n":4}"#]);
        // The controller's share is bounded too, the oldest going first.
        assert_eq!(a.take_forward(1, 100), [r#"{"n":3}"#]);
        assert_eq!(a.take_forward(5, 100), [r#"{"n":4}"#]);
        assert!(a.take_forward(5, 100).is_empty());
    }

    #[test]
    fn records_for_the_controller_are_bounded_in_bytes() {
        let (w, d) = counters();
        let settings = Settings {
            stdout: false,
            ring: 0,
            pending: 10,
            forward: 10,
        };
        let a = Auditor::start(settings, w, d, None).unwrap();
        a.emit(&serde_json::json!({ "n": "x".repeat(50) }));
        for i in 5..8 {
            a.emit(&serde_json::json!({ "n": i }));
        }
        // What never fits is dropped; what does not fit now waits for the next batch.
        assert_eq!(a.take_forward(5, 20), [r#"{"n":5}"#, r#"{"n":6}"#]);
        assert_eq!(a.take_forward(5, 20), [r#"{"n":7}"#]);
    }

    #[test]
    fn nothing_to_do_is_no_sink() {
        let (w, d) = counters();
        let settings = Settings {
            stdout: false,
            ring: 0,
            pending: 10,
            forward: 0,
        };
        assert!(Auditor::start(settings, w, d, None).is_none());
    }

    #[test]
    fn pending_records_are_bounded_and_written_in_order() {
        let (w, d) = counters();
        let settings = Settings {
            stdout: true,
            ring: 1,
            pending: 2,
            forward: 0,
        };
        // Not started: records wait for a writer that is driven by hand.
        let a = Auditor {
            settings,
            inner: Mutex::new(Inner::default()),
            written: w.clone(),
            dropped: d.clone(),
            writer: Mutex::new(None),
            stop: std::sync::atomic::AtomicBool::new(true),
            otlp: None,
        };
        for i in 0..3 {
            a.emit(&serde_json::json!({ "n": i }));
        }
        assert_eq!(d.get(), 1, "the third record finds the pending lines full");
        let mut out = Vec::new();
        a.write_loop(Some(&mut out));
        assert_eq!(String::from_utf8(out).unwrap(), "{\"n\":0}\n{\"n\":1}\n");
        assert_eq!(w.get(), 2);
        assert_eq!(
            a.recent(5),
            [r#"{"n":1}"#],
            "written lines move to the ring"
        );
    }
}
