//! What happens during a run, as reporters see it: [`Event`], the [`Reporter`] trait and the
//! [`Fanout`] that hands every event to each reporter. A leaf module: the logger
//! ([`crate::log`]) emits events, the reporters (terminal, JUnit, XML log, report timeline,
//! OTLP exporter) consume them, and neither side is named here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::trace::SpanRecord;

/// One thing that happened.
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
    /// A line from a machine's console; `shown` is false while console lines are not echoed
    /// (`serial_stdout_off()`).
    Serial {
        machine: &'a str,
        line: &'a str,
        shown: bool,
    },
    /// A test error (printed with the `!!! ` prefix).
    TestError { msg: &'a str },
    /// A warning.
    Warning { msg: &'a str },
    /// A subtest began.
    SubtestStart { name: &'a str },
    /// A subtest ended; `failure` holds the line logged for its failure, when it failed.
    SubtestEnd {
        name: &'a str,
        failure: Option<&'a str>,
    },
    /// A span began (every block, test, subtest, boot and operation is one).
    SpanStart(&'a SpanRecord),
    /// A span ended, with its status.
    SpanEnd(&'a SpanRecord),
    /// A screenshot was written to `path`.
    Screenshot { machine: &'a str, path: &'a Path },
}

/// A consumer of events.
pub trait Reporter: Send {
    /// Handles one event.
    fn event(&mut self, event: &Event<'_>);

    /// The run is over: write what is left.
    fn finish(&mut self) {}

    /// A failure to report once (a file the reporter could not write): the logger logs it
    /// as a test error and fails the run.
    fn take_failure(&mut self) -> Option<String> {
        None
    }
}

/// A reporter shared with whoever reads it at the end of the run (the JUnit file, the HTML
/// report): the fan-out holds one handle, the reader another.
impl<R: Reporter> Reporter for Arc<Mutex<R>> {
    fn event(&mut self, event: &Event<'_>) {
        self.lock().unwrap().event(event);
    }

    fn finish(&mut self) {
        self.lock().unwrap().finish();
    }

    fn take_failure(&mut self) -> Option<String> {
        self.lock().unwrap().take_failure()
    }
}

/// Every reporter of a run, each given every event in the order they were added.
#[derive(Default)]
pub struct Fanout {
    reporters: Vec<Box<dyn Reporter>>,
}

impl Fanout {
    /// A fan-out to `reporters`.
    pub fn new(reporters: Vec<Box<dyn Reporter>>) -> Self {
        Fanout { reporters }
    }

    /// Adds a reporter; it sees the events from now on.
    pub fn push(&mut self, reporter: Box<dyn Reporter>) {
        self.reporters.push(reporter);
    }

    /// The failures the reporters have to report (see [`Reporter::take_failure`]).
    pub fn take_failures(&mut self) -> Vec<String> {
        self.reporters
            .iter_mut()
            .filter_map(|r| r.take_failure())
            .collect()
    }
}

impl Reporter for Fanout {
    fn event(&mut self, event: &Event<'_>) {
        for r in self.reporters.iter_mut() {
            r.event(event);
        }
    }

    fn finish(&mut self) {
        for r in self.reporters.iter_mut() {
            r.finish();
        }
    }
}
