//! Process-wide interruption: SIGINT, SIGTERM and the global timeout set a flag that every
//! blocking wait in the engine checks between short slices, so waits end promptly.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static FLAG: AtomicBool = AtomicBool::new(false);
/// Set once the global timeout fired; survives [`clear`] so the edge can report it.
static TIMED_OUT: AtomicBool = AtomicBool::new(false);
static REASON: AtomicU8 = AtomicU8::new(0);
static INSTALLED: std::sync::Once = std::sync::Once::new();

/// Longest time a blocking call sleeps before it looks at the flag again.
pub const SLICE: Duration = Duration::from_millis(100);

/// Why the run was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// The driver's global timeout expired.
    GlobalTimeout,
}

/// Registers SIGINT and SIGTERM handlers that set the flag. Handlers installed before this
/// (e.g. Python's) keep running: signal-hook chains to them.
pub fn install_signal_handlers() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        for (sig, reason) in [
            (signal_hook::consts::SIGINT, Reason::Interrupt),
            (signal_hook::consts::SIGTERM, Reason::Terminate),
        ] {
            // SAFETY: the handler only stores to atomics, which is async-signal-safe.
            let r = unsafe { signal_hook::low_level::register(sig, move || raise(reason)) };
            if let Err(e) = r {
                result = Err(e);
            }
        }
    });
    result
}

/// Sets the flag. The global timeout's own SIGTERM does not turn it into a plain SIGTERM.
pub fn raise(reason: Reason) {
    if reason == Reason::GlobalTimeout {
        TIMED_OUT.store(true, Ordering::SeqCst);
    }
    if !TIMED_OUT.load(Ordering::SeqCst) || reason == Reason::GlobalTimeout {
        REASON.store(reason as u8 + 1, Ordering::SeqCst);
    }
    FLAG.store(true, Ordering::SeqCst);
}

/// True once the global timeout fired (even after [`clear`]).
pub fn timed_out() -> bool {
    TIMED_OUT.load(Ordering::SeqCst)
}

/// Clears the flag, once the interruption has been reported to the caller.
pub fn clear() {
    FLAG.store(false, Ordering::SeqCst);
}

/// The current interruption, if any.
pub fn pending() -> Option<Reason> {
    if !FLAG.load(Ordering::SeqCst) {
        return None;
    }
    Some(match REASON.load(Ordering::SeqCst) {
        2 => Reason::Terminate,
        3 => Reason::GlobalTimeout,
        _ => Reason::Interrupt,
    })
}

/// Fails with [`Error::Interrupted`] when the flag is set.
pub fn check() -> Result<()> {
    match pending() {
        Some(_) => Err(Error::Interrupted),
        None => Ok(()),
    }
}

/// An optional point in time after which a wait gives up.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No limit.
    pub const NEVER: Deadline = Deadline(None);

    /// A limit `d` from now, or none.
    pub fn after(d: Option<Duration>) -> Self {
        Deadline(d.map(|d| Instant::now() + d))
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Deadline(Some(a.min(b))),
            (a, b) => Deadline(a.or(b)),
        }
    }

    /// True once the limit has passed.
    pub fn expired(&self) -> bool {
        self.0.is_some_and(|t| Instant::now() >= t)
    }

    /// How long to sleep next: at most [`SLICE`], never past the deadline.
    pub fn slice(&self) -> Duration {
        match self.0 {
            None => SLICE,
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .min(SLICE)
                .max(Duration::from_millis(1)),
        }
    }
}

/// A cheap cancellation token for background threads (e.g. the global timer).
#[derive(Clone, Default)]
pub struct Cancel(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Cancel {
    /// Cancels; wakes every waiter.
    pub fn cancel(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits up to `d`; true when cancelled.
    pub fn wait(&self, d: Duration) -> bool {
        let guard = self.0 .0.lock().unwrap();
        let (guard, _) = self.0 .1.wait_timeout_while(guard, d, |c| !*c).unwrap();
        *guard
    }
}
