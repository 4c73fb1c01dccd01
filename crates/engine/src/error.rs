//! Typed errors of the engine. Each carries the data needed to render it at the edge:
//! the machine, the command, and for guest failures the last console lines.

use std::fmt;
use std::time::Duration;

/// Result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way an engine operation can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command run with `succeed` (or an equivalent check) exited non-zero.
    #[error("command `{command}` failed (exit code {status})")]
    CommandFailed {
        machine: String,
        command: String,
        status: i32,
        output: String,
    },
    /// A command run with `fail` exited zero.
    #[error("command `{command}` unexpectedly succeeded")]
    UnexpectedSuccess { machine: String, command: String },
    /// A wait (`wait_until_succeeds`, `wait_for_open_port`, ...) ran out of time.
    #[error("{machine}: {what} timed out after {elapsed:.2} seconds (timeout={})", fmt_secs(.timeout))]
    WaitTimedOut {
        machine: String,
        what: String,
        elapsed: f64,
        timeout: Duration,
    },
    /// A systemd unit ended in a state it cannot leave on its own.
    #[error("{message}")]
    UnitState { machine: String, message: String },
    /// The guest or its process failed: no handshake, died mid-command, start script failed.
    #[error("{machine}: {message}{}", ConsoleTail(.console_tail))]
    Guest {
        machine: String,
        message: String,
        console_tail: Vec<String>,
    },
    /// An operation was called in a state where it cannot work (e.g. QMP before start).
    #[error("{machine}: {message}")]
    InvalidState { machine: String, message: String },
    /// A snapshot the machine cannot take as it is configured: QEMU refused to save it (a 9p
    /// share in use, a disk that cannot hold snapshots, no disk for the state) or the guest
    /// cannot unmount a shared directory. `fix` says what makes it possible (may be empty).
    #[error("{machine}: cannot take snapshot {name:?}: {reason}{}", FixNote(.fix))]
    SnapshotRefused {
        machine: String,
        name: String,
        reason: String,
        fix: String,
    },
    /// An operation the machine's backend cannot do (a container has no display, no QEMU
    /// monitor, ...): `reason` says what it lacks.
    #[error("{machine}: {operation}: not supported by the {backend} backend ({reason})")]
    Unsupported {
        machine: String,
        operation: String,
        backend: String,
        reason: String,
    },
    /// A wait that upstream reports as a plain `TimeoutError` (e.g. `wait_for_qmp_event`).
    #[error("{machine}: {what} timed out")]
    Timeout { machine: String, what: String },
    /// The QEMU machine protocol returned an error.
    #[error("QMP error {class}: {desc}")]
    Qmp { class: String, desc: String },
    /// The command line or configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// An I/O error with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The run was interrupted (SIGINT, SIGTERM or the global timeout).
    #[error("interrupted")]
    Interrupted,
    /// A network condition or partition given with an invalid value (nothing was sent).
    #[error(transparent)]
    NetworkCondition(#[from] crate::netem::NetemError),
    /// Changing network conditions or a partition in the guest failed.
    #[error("{machine}: {message}")]
    Network { machine: String, message: String },
    /// A callback supplied by the caller failed (a polling condition, a predicate).
    #[error("{0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for failures the test script asked to check (upstream's `RequestedAssertionFailed`).
    pub fn is_requested_assertion(&self) -> bool {
        matches!(
            self,
            Error::CommandFailed { .. }
                | Error::UnexpectedSuccess { .. }
                | Error::WaitTimedOut { .. }
                | Error::UnitState { .. }
        )
    }
}

fn fmt_secs(d: &Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

struct FixNote<'a>(&'a str);

impl fmt::Display for FixNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, ". Fix: {}", self.0)
        }
    }
}

struct ConsoleTail<'a>(&'a [String]);

impl fmt::Display for ConsoleTail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        write!(f, "\nlast {} console lines:", self.0.len())?;
        for line in self.0 {
            write!(f, "\n  | {line}")?;
        }
        Ok(())
    }
}
