//! The run's log: every message, nested block, serial line and subtest goes through
//! [`Logger`], which fans it out to its reporters (the terminal, the JUnit collector).
//! Nothing here exits the process.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::junit::JunitCollector;

/// One thing that happened, as reporters see it.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A plain line, optionally attributed to a machine.
    Line {
        machine: Option<&'a str>,
        msg: &'a str,
    },
    /// A nested block opened.
    BlockStart {
        machine: Option<&'a str>,
        msg: &'a str,
    },
    /// A nested block closed normally after `seconds`.
    BlockEnd {
        machine: Option<&'a str>,
        msg: &'a str,
        seconds: f64,
    },
    /// A line from a machine's console.
    Serial { machine: &'a str, line: &'a str },
    /// A test error (printed with the `!!! ` prefix).
    TestError { msg: &'a str },
    /// A warning.
    Warning { msg: &'a str },
    /// A subtest began.
    SubtestStart { name: &'a str },
    /// A subtest ended; `failure` holds the message when it failed.
    SubtestEnd {
        name: &'a str,
        failure: Option<&'a str>,
    },
}

/// A consumer of events.
pub trait Reporter: Send {
    /// Handles one event.
    fn event(&mut self, event: &Event<'_>);
}

/// Upstream's terminal format, on stderr.
pub struct TerminalReporter {
    color: bool,
    print_serial: Arc<AtomicBool>,
}

const BRIGHT_GREEN: &str = "\x1b[1m\x1b[32m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

impl TerminalReporter {
    fn styled(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_string()
        }
    }
}

fn prefixed(machine: Option<&str>, msg: &str) -> String {
    match machine {
        Some(m) => format!("{m}: {msg}"),
        None => msg.to_string(),
    }
}

impl Reporter for TerminalReporter {
    fn event(&mut self, event: &Event<'_>) {
        let line = match *event {
            Event::Line { machine, msg } => prefixed(machine, msg),
            Event::BlockStart { machine, msg } => {
                prefixed(machine, &self.styled(BRIGHT_GREEN, msg))
            }
            Event::BlockEnd {
                machine,
                msg,
                seconds,
            } => prefixed(
                machine,
                &format!("(finished: {msg}, in {seconds:.2} seconds)"),
            ),
            Event::Serial { machine, line } => {
                if !self.print_serial.load(Ordering::Relaxed) {
                    return;
                }
                self.styled(DIM, &format!("{machine} # {line}"))
            }
            Event::TestError { msg } => format!("{}{msg}", self.styled(RED, "!!! ")),
            Event::Warning { msg } => self.styled(YELLOW, &format!("warning: {msg}")),
            Event::SubtestStart { .. } | Event::SubtestEnd { .. } => return,
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

struct Inner {
    reporters: Vec<Box<dyn Reporter>>,
    junit: Option<JunitCollector>,
    failed: bool,
}

/// The log of one run. Cheap to share (`Arc`).
pub struct Logger {
    inner: Mutex<Inner>,
    print_serial: Arc<AtomicBool>,
}

impl Default for Logger {
    fn default() -> Self {
        Logger::new(false)
    }
}

impl Logger {
    /// A logger that writes upstream's format to stderr, coloured when `color`.
    pub fn new(color: bool) -> Self {
        let print_serial = Arc::new(AtomicBool::new(true));
        let terminal = TerminalReporter {
            color,
            print_serial: print_serial.clone(),
        };
        Logger {
            inner: Mutex::new(Inner {
                reporters: vec![Box::new(terminal)],
                junit: None,
                failed: false,
            }),
            print_serial,
        }
    }

    /// A logger with only the given reporters (for tests).
    pub fn with_reporters(reporters: Vec<Box<dyn Reporter>>) -> Self {
        Logger {
            inner: Mutex::new(Inner {
                reporters,
                junit: None,
                failed: false,
            }),
            print_serial: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Starts collecting JUnit test cases (one per subtest).
    pub fn enable_junit(&self) {
        self.inner.lock().unwrap().junit = Some(JunitCollector::new());
    }

    /// Writes the JUnit XML file, if collection was enabled.
    pub fn write_junit(&self, path: &std::path::Path) -> std::io::Result<()> {
        let inner = self.inner.lock().unwrap();
        match &inner.junit {
            Some(j) => j.write(path),
            None => Ok(()),
        }
    }

    fn emit(&self, event: Event<'_>) {
        let mut inner = self.inner.lock().unwrap();
        if matches!(event, Event::TestError { .. }) {
            inner.failed = true;
        }
        if let Some(j) = inner.junit.as_mut() {
            j.event(&event);
        }
        for r in inner.reporters.iter_mut() {
            r.event(&event);
        }
    }

    /// Logs a line.
    pub fn log(&self, msg: &str, machine: Option<&str>) {
        self.emit(Event::Line { machine, msg });
    }

    /// Logs a warning.
    pub fn warning(&self, msg: &str) {
        self.emit(Event::Warning { msg });
    }

    /// Logs a test error (`!!! ` prefix) and marks the run as failed.
    pub fn test_error(&self, msg: &str) {
        self.emit(Event::TestError { msg });
    }

    /// Logs a console line of `machine`.
    pub fn serial(&self, machine: &str, line: &str) {
        self.emit(Event::Serial { machine, line });
    }

    /// Whether console lines are printed (`serial_stdout_on/off`).
    pub fn set_print_serial(&self, on: bool) {
        self.print_serial.store(on, Ordering::Relaxed);
    }

    /// Whether console lines are printed.
    pub fn print_serial(&self) -> bool {
        self.print_serial.load(Ordering::Relaxed)
    }

    /// True once a test error was logged.
    pub fn failed(&self) -> bool {
        self.inner.lock().unwrap().failed
    }

    /// Opens a nested block; call [`Block::finish`] on success. Dropping it unfinished
    /// (an error) prints no "finished" line, as upstream.
    pub fn nested<'a>(&'a self, msg: &str, machine: Option<&str>) -> Block<'a> {
        self.emit(Event::BlockStart { machine, msg });
        Block {
            logger: self,
            msg: msg.to_string(),
            machine: machine.map(str::to_string),
            start: Instant::now(),
        }
    }

    /// Marks the start of a subtest (its nested block is opened by the caller).
    pub fn subtest_start(&self, name: &str) {
        self.emit(Event::SubtestStart { name });
    }

    /// Marks the end of a subtest.
    pub fn subtest_end(&self, name: &str, failure: Option<&str>) {
        self.emit(Event::SubtestEnd { name, failure });
    }
}

/// An open nested block that owns its data (for callers that cannot hold a borrow, like
/// a Python `with` statement). Close it with [`Logger::close`].
pub struct OwnedBlock {
    msg: String,
    machine: Option<String>,
    start: Instant,
}

impl Logger {
    /// Opens a nested block.
    pub fn open(&self, msg: &str, machine: Option<&str>) -> OwnedBlock {
        self.emit(Event::BlockStart { machine, msg });
        OwnedBlock {
            msg: msg.to_string(),
            machine: machine.map(str::to_string),
            start: Instant::now(),
        }
    }

    /// Closes a block normally (prints its "(finished: ...)" line).
    pub fn close(&self, block: &OwnedBlock) {
        self.emit(Event::BlockEnd {
            machine: block.machine.as_deref(),
            msg: &block.msg,
            seconds: block.start.elapsed().as_secs_f64(),
        });
    }
}

/// An open nested block.
pub struct Block<'a> {
    logger: &'a Logger,
    msg: String,
    machine: Option<String>,
    start: Instant,
}

impl Block<'_> {
    /// Closes the block with its "(finished: ...)" line.
    pub fn finish(self) {
        self.logger.emit(Event::BlockEnd {
            machine: self.machine.as_deref(),
            msg: &self.msg,
            seconds: self.start.elapsed().as_secs_f64(),
        });
    }

    /// Runs `f` inside the block, finishing it when `f` succeeds.
    pub fn run<T, E>(self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let r = f();
        if r.is_ok() {
            self.finish();
        }
        r
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every event as the terminal would print it, without colour.
    pub struct Capture(pub Arc<Mutex<Vec<String>>>);

    impl Reporter for Capture {
        fn event(&mut self, event: &Event<'_>) {
            let mut t = TerminalReporter {
                color: false,
                print_serial: Arc::new(AtomicBool::new(true)),
            };
            let line = match *event {
                Event::Line { machine, msg } => prefixed(machine, msg),
                Event::BlockStart { machine, msg } => prefixed(machine, msg),
                Event::BlockEnd { machine, msg, .. } => {
                    prefixed(machine, &format!("(finished: {msg})"))
                }
                Event::Serial { machine, line } => format!("{machine} # {line}"),
                Event::TestError { msg } => format!("!!! {msg}"),
                _ => {
                    t.event(event);
                    return;
                }
            };
            self.0.lock().unwrap().push(line);
        }
    }

    pub fn capturing() -> (Logger, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        (
            Logger::with_reporters(vec![Box::new(Capture(lines.clone()))]),
            lines,
        )
    }

    #[test]
    fn finished_line_only_on_success() {
        let (log, lines) = capturing();
        log.nested("ok", Some("m")).finish();
        let _ = log.nested("boom", None).run(|| Err::<(), _>("x"));
        assert_eq!(
            *lines.lock().unwrap(),
            vec!["m: ok", "m: (finished: ok)", "boom"]
        );
    }
}
