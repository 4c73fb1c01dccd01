//! The one wait primitive behind every `wait_*` method.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::interrupt;

/// Pause between attempts: starts short so fast conditions are seen fast, grows to
/// upstream's one second so slow ones cost the guest little.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// A fixed interval (upstream's `retry()` uses one second).
    pub fn fixed(d: Duration) -> Self {
        Backoff { next: d, max: d }
    }

    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Sleeps `d`, waking early (with an error) when the run is interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        interrupt::check()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(interrupt::SLICE));
    }
}

/// Calls `attempt(last_try)` until it returns `Some`, for at most `timeout` (none: forever),
/// then once more with `last_try = true`, like upstream generation B. `Err(elapsed)` when
/// every attempt said no.
pub fn until<T>(
    timeout: Option<Duration>,
    mut backoff: Backoff,
    mut attempt: impl FnMut(bool) -> Result<Option<T>>,
) -> Result<Result<T, f64>> {
    let start = Instant::now();
    loop {
        if let Some(t) = timeout {
            if start.elapsed() >= t {
                break;
            }
        }
        if let Some(v) = attempt(false)? {
            return Ok(Ok(v));
        }
        let mut pause = backoff.step();
        if let Some(t) = timeout {
            pause = pause.min(t.saturating_sub(start.elapsed()));
        }
        sleep(pause)?;
    }
    match attempt(true)? {
        Some(v) => Ok(Ok(v)),
        None => Ok(Err(start.elapsed().as_secs_f64())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_after_some_tries() {
        let mut n = 0;
        let r = until(
            Some(Duration::from_secs(5)),
            Backoff::fixed(Duration::from_millis(1)),
            |_| {
                n += 1;
                Ok((n == 3).then_some(n))
            },
        )
        .unwrap();
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn last_try_after_timeout() {
        let mut last = false;
        let r = until(
            Some(Duration::from_millis(30)),
            Backoff::fixed(Duration::from_millis(5)),
            |l| {
                last = l;
                Ok(None::<()>)
            },
        )
        .unwrap();
        assert!(last);
        assert!(r.unwrap_err() >= 0.03);
    }
}
