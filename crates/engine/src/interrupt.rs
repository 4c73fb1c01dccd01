//! Process-wide interruption: SIGINT, SIGTERM and the global timeout set a flag that every
//! blocking wait in the engine checks between short slices, so waits end promptly.
//!
//! SIGINT is cleared once it has been reported (the REPL goes on after Ctrl-C). SIGTERM and
//! the global timeout end the run: they stay set, so every later blocking call fails too and
//! a script that catches the exception cannot go on using the machines.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static FLAG: AtomicBool = AtomicBool::new(false);
/// `Reason as u8 + 1`, or 0; only ever raised (a later SIGINT does not hide a SIGTERM).
static REASON: AtomicU8 = AtomicU8::new(0);
/// Set once an ending run's error has reached the caller ([`report_ending`]).
static REPORTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: std::sync::Once = std::sync::Once::new();

/// Longest time a blocking call sleeps before it looks at the flag again.
pub const SLICE: Duration = Duration::from_millis(100);

/// Why the run was interrupted, the weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (also `terminate_test()` called by the script).
    Terminate,
    /// The driver's global timeout expired.
    GlobalTimeout,
}

impl Reason {
    /// True for the reasons that end the run (they are never cleared).
    pub fn ends_the_run(self) -> bool {
        self != Reason::Interrupt
    }
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

/// Sets the flag. A stronger reason wins: the global timeout's own SIGTERM stays a timeout.
pub fn raise(reason: Reason) {
    REASON.fetch_max(reason as u8 + 1, Ordering::SeqCst);
    FLAG.store(true, Ordering::SeqCst);
}

/// True once the global timeout fired.
pub fn timed_out() -> bool {
    REASON.load(Ordering::SeqCst) == Reason::GlobalTimeout as u8 + 1
}

/// Clears a SIGINT once it has been reported to the caller. SIGTERM and the global timeout
/// stay set.
pub fn clear() {
    if pending() == Some(Reason::Interrupt) {
        FLAG.store(false, Ordering::SeqCst);
        // only if nothing stronger arrived meanwhile
        let _ = REASON.compare_exchange(
            Reason::Interrupt as u8 + 1,
            0,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if REASON.load(Ordering::SeqCst) != 0 {
            FLAG.store(true, Ordering::SeqCst);
        }
    }
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

/// True once SIGTERM or the global timeout has ended the run.
pub fn ending() -> bool {
    pending().is_some_and(Reason::ends_the_run)
}

/// Fails with [`Error::Interrupted`] once the run is ending: no machine starts or takes a
/// command after SIGTERM or the global timeout.
pub fn check_ending() -> Result<()> {
    match ending() {
        true => Err(Error::Interrupted),
        false => Ok(()),
    }
}

/// An ending run's error is reaching the caller (the test script). The first time, that
/// error unwinds the script; a later time, the script caught it and went on: SIGTERM is
/// sent again, so that the driver's handler ends the run from inside the script.
pub fn report_ending() {
    if REPORTED.swap(true, Ordering::SeqCst) {
        // SAFETY: signalling our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
    }
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
