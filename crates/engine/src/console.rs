//! A machine's console: the lines its serial port (QEMU's stdout) or journal printed.
//! A reader thread appends lines; waits are woken by new lines, never by polling.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::log::Logger;

#[derive(Default)]
struct State {
    full: Vec<String>,
    /// Lines not yet consumed by `wait_for_text` (upstream's `last_lines` queue).
    unread: VecDeque<String>,
    /// The reader reached end of file (the process exited).
    closed: bool,
}

/// The console of one machine.
#[derive(Default)]
pub struct Console {
    state: Mutex<State>,
    changed: Condvar,
}

impl Console {
    /// Forgets everything (upstream resets the log on every `start()`).
    pub fn reset(&self) {
        *self.state.lock().unwrap() = State::default();
    }

    /// Appends one line.
    pub fn push(&self, line: String) {
        let mut s = self.state.lock().unwrap();
        s.unread.push_back(line.clone());
        s.full.push(line);
        drop(s);
        self.changed.notify_all();
    }

    /// Takes a new stream after the old one ended without a new start (a warm standby took
    /// over the machine): the log is kept, waits see the console open again.
    pub fn reopen(&self) {
        self.state.lock().unwrap().closed = false;
    }

    /// Marks the end of the stream.
    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.changed.notify_all();
    }

    /// The whole log since the last start, lines joined by `\n`.
    pub fn text(&self) -> String {
        self.state.lock().unwrap().full.join("\n")
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.full[s.full.len().saturating_sub(n)..].to_vec()
    }

    /// Takes the oldest line not yet consumed by a wait (upstream's `last_lines.get()`),
    /// waiting for one until `deadline`; `None` when none came.
    pub fn next_unread(&self, deadline: Deadline) -> Result<Option<String>> {
        let mut s = self.state.lock().unwrap();
        loop {
            if let Some(line) = s.unread.pop_front() {
                return Ok(Some(line));
            }
            if s.closed || deadline.expired() {
                return Ok(None);
            }
            interrupt::check()?;
            s = self.changed.wait_timeout(s, deadline.slice()).unwrap().0;
        }
    }

    /// How many lines no wait has consumed yet (upstream's `last_lines.qsize()`).
    pub fn unread_count(&self) -> usize {
        self.state.lock().unwrap().unread.len()
    }

    /// True once the stream ended (the reader thread is done).
    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap().closed
    }

    /// Waits until the stream ends or `deadline` passes; true when it ended.
    pub fn wait_closed(&self, deadline: Deadline) -> Result<bool> {
        let mut s = self.state.lock().unwrap();
        loop {
            if s.closed {
                return Ok(true);
            }
            if deadline.expired() {
                return Ok(false);
            }
            interrupt::check()?;
            s = self.changed.wait_timeout(s, deadline.slice()).unwrap().0;
        }
    }

    /// Waits until `matches` accepts the accumulated text. Like upstream, each step moves one
    /// unread line into a buffer (lines are concatenated as upstream does, without separator)
    /// and tests the whole buffer; unlike upstream it waits for new lines instead of sleeping.
    pub fn wait_for_text(
        &self,
        deadline: Deadline,
        matches: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<WaitOutcome> {
        let mut acc = String::new();
        if matches(&acc)? {
            return Ok(WaitOutcome::Matched);
        }
        let mut s = self.state.lock().unwrap();
        loop {
            while let Some(line) = s.unread.pop_front() {
                acc.push_str(&line);
                drop(s);
                if matches(&acc)? {
                    return Ok(WaitOutcome::Matched);
                }
                s = self.state.lock().unwrap();
            }
            if s.closed {
                return Ok(WaitOutcome::Closed);
            }
            if deadline.expired() {
                return Ok(WaitOutcome::TimedOut);
            }
            interrupt::check()?;
            s = self.changed.wait_timeout(s, deadline.slice()).unwrap().0;
        }
    }

    /// Starts a thread reading `stream` line by line into the console and the log.
    pub fn spawn_reader(
        self: &Arc<Self>,
        stream: impl Read + Send + 'static,
        machine: String,
        logger: Arc<Logger>,
    ) -> std::thread::JoinHandle<()> {
        self.spawn_reader_with(stream, machine, logger, |_| {})
    }

    /// [`Console::spawn_reader`], also showing every line to `on_line`.
    pub fn spawn_reader_with(
        self: &Arc<Self>,
        stream: impl Read + Send + 'static,
        machine: String,
        logger: Arc<Logger>,
        on_line: impl Fn(&str) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let console = self.clone();
        std::thread::Builder::new()
            .name(format!("ntng-console-{machine}"))
            .spawn(move || {
                for_each_line(stream, |line| {
                    on_line(&line);
                    logger.serial(&machine, &line);
                    console.push(line);
                });
                console.close();
            })
            .expect("cannot start a console reader thread")
    }
}

/// Calls `f` with each line of `stream` (without `\r` and trailing blanks) until it ends.
pub fn for_each_line(stream: impl Read, mut f: impl FnMut(String)) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        raw.retain(|&b| b != b'\r');
        f(String::from_utf8_lossy(&raw).trim_end().to_string());
    }
}

/// How [`Console::wait_for_text`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The text matched.
    Matched,
    /// The deadline passed.
    TimedOut,
    /// The console closed (the machine stopped) with no match.
    Closed,
}

/// Converts a wait outcome into an error naming the machine.
pub fn require_match(
    outcome: WaitOutcome,
    machine: &str,
    what: &str,
    secs: f64,
    timeout: Option<std::time::Duration>,
    console: &Console,
) -> Result<()> {
    match outcome {
        WaitOutcome::Matched => Ok(()),
        WaitOutcome::TimedOut => Err(Error::WaitTimedOut {
            machine: machine.to_string(),
            what: what.to_string(),
            elapsed: secs,
            timeout: timeout.unwrap_or_default(),
        }),
        WaitOutcome::Closed => Err(Error::Guest {
            machine: machine.to_string(),
            message: format!("{what}: the console closed (the machine stopped) before a match"),
            console_tail: console.tail(20),
        }),
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waits_for_a_later_line_and_keeps_the_rest_unread() {
        let c = Arc::new(Console::default());
        c.push("boot".into());
        let c2 = c.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.push("login: ".into());
            c2.push("after".into());
        });
        let d = Deadline::after(Some(Duration::from_secs(5)));
        let r = c
            .wait_for_text(d, &mut |t| Ok(t.contains("login:")))
            .unwrap();
        assert_eq!(r, WaitOutcome::Matched);
        // "after" stays unread for the next wait, as in upstream's queue
        let r = c.wait_for_text(d, &mut |t| Ok(t == "after")).unwrap();
        assert_eq!(r, WaitOutcome::Matched);
        assert_eq!(c.text(), "boot\nlogin: \nafter");
    }

    #[test]
    fn unread_lines_are_taken_one_by_one_and_close_ends_the_wait() {
        let c = Console::default();
        c.push("one".into());
        c.push("two".into());
        assert_eq!(c.unread_count(), 2);
        let now = Deadline::after(Some(Duration::ZERO));
        assert_eq!(c.next_unread(now).unwrap().as_deref(), Some("one"));
        assert_eq!(c.unread_count(), 1);
        assert!(!c.wait_closed(now).unwrap());
        c.close();
        assert_eq!(
            c.next_unread(Deadline::NEVER).unwrap().as_deref(),
            Some("two")
        );
        assert_eq!(c.next_unread(Deadline::NEVER).unwrap(), None);
        assert!(c.is_closed() && c.wait_closed(Deadline::NEVER).unwrap());
        assert_eq!(c.text(), "one\ntwo");
    }

    #[test]
    fn timeout_and_close() {
        let c = Console::default();
        let d = Deadline::after(Some(Duration::from_millis(50)));
        assert_eq!(
            c.wait_for_text(d, &mut |_| Ok(false)).unwrap(),
            WaitOutcome::TimedOut
        );
        c.close();
        assert_eq!(
            c.wait_for_text(Deadline::NEVER, &mut |_| Ok(false))
                .unwrap(),
            WaitOutcome::Closed
        );
    }

    #[test]
    fn reopen_keeps_the_log_and_waits_again() {
        let c = Console::default();
        c.push("before".into());
        c.close();
        c.reopen();
        let d = Deadline::after(Some(Duration::from_millis(50)));
        assert_eq!(
            c.wait_for_text(d, &mut |t| Ok(t.contains("never")))
                .unwrap(),
            WaitOutcome::TimedOut
        );
        c.push("after".into());
        assert_eq!(c.text(), "before\nafter");
    }
}
