//! Spans: what the run did, when, and how it ended, as a tree. Every nested log block, test,
//! subtest, boot and machine operation is a span; reporters consume the finished
//! [`SpanRecord`]s (the OTLP exporter, the HTML report, the timing summary).
//!
//! ```text
//! run ─┬─ test <script or pytest test> ─┬─ subtest <name> ─┬─ succeed (op)
//!      │                                │                  └─ wait_for_unit (op)
//!      │                                └─ boot <machine> (start → handshake)
//!      └─ cleanup (block)
//! ```

pub mod export;
pub mod otlp;
mod table;

pub use table::SpanTable;

use std::fmt;
use std::time::SystemTime;

/// A trace's id (W3C trace context: 16 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id (8 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    loop {
        // SAFETY: getrandom(2) writes at most `N` bytes into `buf`.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), N, 0) };
        if n == N as isize && buf.iter().any(|&b| b != 0) {
            return buf;
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    out.iter().any(|&b| b != 0).then_some(out)
}

impl TraceId {
    /// A new random id.
    pub fn random() -> Self {
        TraceId(random_bytes())
    }
}

impl SpanId {
    /// A new random id.
    pub fn random() -> Self {
        SpanId(random_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// The W3C `traceparent` value naming `span` of `trace` (sampled).
pub fn traceparent(trace: TraceId, span: SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

/// Parses a W3C `traceparent` (version 00): the trace and the parent span.
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    match parts.as_slice() {
        ["00", trace, span, flags] if flags.len() == 2 => {
            Some((TraceId(unhex(trace)?), SpanId(unhex(span)?)))
        }
        _ => None,
    }
}

/// What a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The whole run.
    Run,
    /// A test: the legacy script as a whole, or one pytest test.
    Test,
    /// A `with subtest(...)` block.
    Subtest,
    /// A machine's boot, from its start to the backdoor handshake.
    Boot,
    /// A machine operation (`succeed`, `wait_for_unit`, ...).
    Operation,
    /// Any other nested log block.
    Block,
    /// A time while network conditions or a partition are in force (the report's bands).
    Network,
}

impl SpanKind {
    /// The name used in attributes and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Run => "run",
            SpanKind::Test => "test",
            SpanKind::Subtest => "subtest",
            SpanKind::Boot => "boot",
            SpanKind::Operation => "operation",
            SpanKind::Block => "block",
            SpanKind::Network => "network",
        }
    }
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

impl From<i32> for AttrValue {
    fn from(v: i32) -> Self {
        AttrValue::Int(v.into())
    }
}

impl From<usize> for AttrValue {
    fn from(v: usize) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(v) => write!(f, "{v}"),
            AttrValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Attribute keys, one place for their spelling.
pub mod attr {
    pub const KIND: &str = "nixos_test.kind";
    pub const MACHINE: &str = "nixos_test.machine";
    pub const MESSAGE: &str = "nixos_test.message";
    pub const OPERATION: &str = "nixos_test.operation";
    pub const COMMAND: &str = "nixos_test.command";
    pub const EXIT_STATUS: &str = "nixos_test.exit_status";
    pub const OUTPUT_BYTES: &str = "nixos_test.output_bytes";
    pub const TEST: &str = "nixos_test.test";
    pub const SUBTEST: &str = "nixos_test.subtest";
    pub const SCRIPT: &str = "nixos_test.script";
}

/// How a span ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanStatus {
    /// Still open.
    Unset,
    Ok,
    /// Failed, with the error's message.
    Error(String),
}

/// One span, open or finished.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace: TraceId,
    pub id: SpanId,
    pub parent: Option<SpanId>,
    pub kind: SpanKind,
    pub name: String,
    pub machine: Option<String>,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub attrs: Vec<(&'static str, AttrValue)>,
    pub status: SpanStatus,
}

impl SpanRecord {
    /// Seconds from start to end (or to now while open).
    pub fn seconds(&self) -> f64 {
        self.end
            .unwrap_or_else(SystemTime::now)
            .duration_since(self.start)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Sets attribute `key`, replacing an earlier value.
    pub fn set_attr(&mut self, key: &'static str, value: AttrValue) {
        match self.attrs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key, value)),
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let (t, s) = (TraceId::random(), SpanId::random());
        let tp = traceparent(t, s);
        assert_eq!(tp.len(), 55);
        assert_eq!(parse_traceparent(&tp), Some((t, s)));
    }

    #[test]
    fn traceparent_rejects_bad_values() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let (t, s) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
    }
}
