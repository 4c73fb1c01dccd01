//! The run's log: every message, nested block, serial line and subtest goes through
//! [`Logger`], which fans it out to its reporters (the terminal, the JUnit collector, the
//! timeline of the HTML report and the timing summary, the OTLP exporter). Every nested
//! block is also a span ([`crate::trace`]). Nothing here exits the process.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::junit::JunitCollector;
use crate::report::Timeline;
use crate::terminal::TerminalReporter;
use crate::trace::export::{settings_from_env, Exporter};
use crate::trace::{
    attr, parse_traceparent, traceparent, AttrValue, SpanId, SpanKind, SpanRecord, SpanStatus,
    SpanTable, TraceId,
};
use crate::xml_log::XmlLogReporter;

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
}

struct Inner {
    reporters: Vec<Box<dyn Reporter>>,
    junit: Option<JunitCollector>,
    timeline: Timeline,
    spans: SpanTable,
    exporter: Option<Exporter>,
    run: Option<SpanId>,
    failed: bool,
}

impl Inner {
    fn emit(&mut self, event: &Event<'_>) {
        if let Some(j) = self.junit.as_mut() {
            j.event(event);
        }
        self.timeline.event(event);
        if let (Some(x), Event::SpanEnd(record)) = (&self.exporter, event) {
            x.send((*record).clone());
        }
        for r in self.reporters.iter_mut() {
            r.event(event);
        }
    }

    fn begin(
        &mut self,
        kind: SpanKind,
        name: &str,
        machine: Option<&str>,
        detached: bool,
    ) -> SpanId {
        let mut record = self.spans.begin(kind, name, machine, detached);
        if let Some(m) = machine {
            self.spans.set_attr(record.id, attr::MACHINE, m.into());
            record.set_attr(attr::MACHINE, m.into());
        }
        self.spans
            .set_attr(record.id, attr::KIND, kind.as_str().into());
        record.set_attr(attr::KIND, kind.as_str().into());
        self.emit(&Event::SpanStart(&record));
        record.id
    }

    fn end(&mut self, id: SpanId, status: SpanStatus) {
        if let Some(record) = self.spans.end(id, status) {
            self.emit(&Event::SpanEnd(&record));
        }
    }
}

/// The log of one run. Cheap to share (`Arc`).
pub struct Logger {
    inner: Mutex<Inner>,
    print_serial: Arc<AtomicBool>,
}

impl Default for Logger {
    fn default() -> Self {
        Logger::new(false, false)
    }
}

impl Logger {
    /// A logger that writes upstream's format to stderr, coloured when `color`, with a
    /// boot status line when `progress` (stderr is a terminal).
    pub fn new(color: bool, progress: bool) -> Self {
        let print_serial = Arc::new(AtomicBool::new(true));
        let terminal = TerminalReporter::new(color, print_serial.clone(), progress);
        Logger::build(vec![Box::new(terminal)], print_serial)
    }

    /// A logger with only the given reporters (for tests).
    pub fn with_reporters(reporters: Vec<Box<dyn Reporter>>) -> Self {
        Logger::build(reporters, Arc::new(AtomicBool::new(true)))
    }

    fn build(reporters: Vec<Box<dyn Reporter>>, print_serial: Arc<AtomicBool>) -> Self {
        Logger {
            inner: Mutex::new(Inner {
                reporters,
                junit: None,
                timeline: Timeline::default(),
                spans: SpanTable::new(TraceId::random(), None),
                exporter: None,
                run: None,
                failed: false,
            }),
            print_serial,
        }
    }

    /// Starts collecting JUnit test cases (one per subtest).
    pub fn enable_junit(&self) {
        self.inner.lock().unwrap().junit = Some(JunitCollector::new());
    }

    /// Writes the JUnit XML file, if collection was enabled.
    pub fn write_junit(&self, path: &Path) -> std::io::Result<()> {
        let inner = self.inner.lock().unwrap();
        match &inner.junit {
            Some(j) => j.write(path),
            None => Ok(()),
        }
    }

    fn emit(&self, event: Event<'_>) {
        self.inner.lock().unwrap().emit(&event);
    }

    /// Logs a line.
    pub fn log(&self, msg: &str, machine: Option<&str>) {
        self.emit(Event::Line { machine, msg });
    }

    /// Logs a warning.
    pub fn warning(&self, msg: &str) {
        self.emit(Event::Warning { msg });
    }

    /// Logs a test error (`!!! ` prefix): the running subtest (or the run's `main` case)
    /// fails in JUnit. It does not fail the run: the exit status depends on what escapes
    /// the script (a subtest failure the script catches passes, as upstream).
    pub fn test_error(&self, msg: &str) {
        self.emit(Event::TestError { msg });
    }

    /// Logs a test error, as [`Logger::test_error`], and fails the run even though nothing
    /// escapes the script (`log.error()`, a subtest failure `--keep-going` goes on after).
    pub fn error(&self, msg: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.failed = true;
        inner.emit(&Event::TestError { msg });
    }

    /// Logs a console line of `machine`.
    pub fn serial(&self, machine: &str, line: &str) {
        self.emit(Event::Serial { machine, line });
    }

    /// Records a screenshot (the HTML report shows it).
    pub fn screenshot(&self, machine: &str, path: &Path) {
        self.emit(Event::Screenshot { machine, path });
    }

    /// Whether console lines are printed (`serial_stdout_on/off`).
    pub fn set_print_serial(&self, on: bool) {
        self.print_serial.store(on, Ordering::Relaxed);
    }

    /// Whether console lines are printed.
    pub fn print_serial(&self) -> bool {
        self.print_serial.load(Ordering::Relaxed)
    }

    /// True once [`Logger::error`] was called.
    pub fn failed(&self) -> bool {
        self.inner.lock().unwrap().failed
    }

    /// Opens a nested block; call [`Block::finish`] on success. Dropping it unfinished
    /// (an error) prints no "finished" line, as upstream, and ends its span as failed.
    pub fn nested<'a>(&'a self, msg: &str, machine: Option<&str>) -> Block<'a> {
        self.block(SpanKind::Block, msg, msg, machine)
    }

    /// A nested block that is a machine operation: span `op`, attributes for the machine
    /// and the message.
    pub fn operation<'a>(&'a self, op: &str, msg: &str, machine: Option<&str>) -> Block<'a> {
        let block = self.block(SpanKind::Operation, op, msg, machine);
        block.attr(attr::OPERATION, op);
        block.attr(attr::MESSAGE, msg);
        block
    }

    fn block<'a>(
        &'a self,
        kind: SpanKind,
        span_name: &str,
        msg: &str,
        machine: Option<&str>,
    ) -> Block<'a> {
        let span = {
            let mut inner = self.inner.lock().unwrap();
            let span = inner.begin(kind, span_name, machine, false);
            inner.emit(&Event::BlockStart { machine, msg });
            span
        };
        Block {
            logger: self,
            msg: msg.to_string(),
            machine: machine.map(str::to_string),
            start: Instant::now(),
            span,
            failure: Mutex::new(None),
            finished: false,
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

/// Spans beyond nested blocks: the run, tests, boots, and the trace context.
impl Logger {
    /// Begins the run's span and, when the `OTEL_*` variables ask for it, exporting spans
    /// over OTLP. A `TRACEPARENT` in `env` makes the run a child of that span.
    pub fn start_run(&self, env: &HashMap<String, String>, name: &str) {
        let mut warnings = Vec::new();
        let exporter = match settings_from_env(env, &mut warnings) {
            Ok(settings) => settings.map(Exporter::start),
            Err(e) => {
                warnings.push(format!("{e}; spans are not exported"));
                None
            }
        };
        // upstream's XML log; run.nix sets LOGFILE=/dev/null
        let xml_log = env.get("LOGFILE").filter(|p| !p.is_empty()).and_then(|p| {
            XmlLogReporter::create(Path::new(p), self.print_serial.clone())
                .map_err(|e| warnings.push(format!("LOGFILE {p}: {e}; no XML log")))
                .ok()
        });
        for w in &warnings {
            self.warning(w);
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(x) = xml_log {
            inner.reporters.push(Box::new(x));
        }
        if let Some((trace, parent)) = env.get("TRACEPARENT").and_then(|v| parse_traceparent(v)) {
            inner.spans = SpanTable::new(trace, Some(parent));
        }
        inner.exporter = exporter;
        let run = inner.begin(SpanKind::Run, name, None, false);
        inner.run = Some(run);
    }

    /// Ends every open span (those still open fail with `interrupted` or the run's failure),
    /// ends the run's span, and flushes the exporter.
    pub fn finish_run(&self, failure: Option<&str>) {
        let mut inner = self.inner.lock().unwrap();
        let run = inner.run.take();
        let cut_short = SpanStatus::Error(failure.unwrap_or("not finished").to_string());
        let open = inner.spans.end_all(&cut_short);
        for mut record in open {
            if Some(record.id) == run {
                record.status = match failure {
                    Some(f) => SpanStatus::Error(f.to_string()),
                    None => SpanStatus::Ok,
                };
            }
            inner.emit(&Event::SpanEnd(&record));
        }
        for r in inner.reporters.iter_mut() {
            r.finish();
        }
        let exporter = inner.exporter.take();
        drop(inner);
        if let Some(x) = exporter {
            x.flush();
        }
    }

    /// Whether spans are exported (and guest commands get a `TRACEPARENT`).
    pub fn exporting(&self) -> bool {
        self.inner.lock().unwrap().exporter.is_some()
    }

    /// The `TRACEPARENT` for guest commands of the calling thread while spans are exported:
    /// the span they run in outside every operation (see [`SpanTable::context`]).
    pub fn command_traceparent(&self) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        inner.exporter.as_ref()?;
        Some(traceparent(inner.spans.trace(), inner.spans.context()?))
    }

    /// Begins a span outside the block structure (a boot, ended from another thread).
    pub fn begin_detached(&self, kind: SpanKind, name: &str, machine: Option<&str>) -> SpanId {
        self.inner.lock().unwrap().begin(kind, name, machine, true)
    }

    /// Ends a span begun by [`Self::begin_detached`] or [`Self::open_span`].
    pub fn end_span(&self, id: SpanId, status: SpanStatus) {
        self.inner.lock().unwrap().end(id, status);
    }

    /// Sets an attribute of an open span.
    pub fn span_attr(&self, id: SpanId, key: &'static str, value: AttrValue) {
        self.inner.lock().unwrap().spans.set_attr(id, key, value);
    }

    /// The calling thread's current span.
    pub fn current_span(&self) -> Option<SpanId> {
        self.inner.lock().unwrap().spans.current()
    }

    /// Runs `f` with `parent` as the thread's current span (for work handed to a thread).
    pub fn in_span<T>(&self, parent: Option<SpanId>, f: impl FnOnce() -> T) -> T {
        let Some(id) = parent else { return f() };
        self.inner.lock().unwrap().spans.push_context(id);
        let r = f();
        self.inner.lock().unwrap().spans.pop_context(id);
        r
    }

    /// The timing summary of the run so far (see [`crate::report::summary`]).
    pub fn timing_summary(&self) -> Vec<String> {
        crate::report::summary::lines(&self.inner.lock().unwrap().timeline)
    }

    /// Writes the HTML report, with each machine's console log.
    pub fn write_html_report(
        &self,
        path: &Path,
        title: &str,
        consoles: &[(String, String)],
    ) -> std::io::Result<()> {
        let inner = self.inner.lock().unwrap();
        let open: Vec<SpanRecord> = inner.spans.open_spans().cloned().collect();
        let html = crate::report::html::render(&inner.timeline, &open, title, consoles);
        std::fs::write(path, html)
    }
}

/// An open block that owns its data (for callers that cannot hold a borrow, like a Python
/// `with` statement). Close it with [`Logger::close`] or [`Logger::close_failed`].
pub struct OwnedBlock {
    msg: Option<String>,
    machine: Option<String>,
    start: Instant,
    span: SpanId,
}

impl OwnedBlock {
    /// The block's span.
    pub fn span(&self) -> SpanId {
        self.span
    }
}

impl Logger {
    /// Opens a nested block.
    pub fn open(&self, msg: &str, machine: Option<&str>) -> OwnedBlock {
        self.open_span(SpanKind::Block, msg, Some(msg), machine)
    }

    /// Opens a span of `kind`; with a `msg`, also a nested block printing it. A span without
    /// a message (a pytest test) prints nothing.
    pub fn open_span(
        &self,
        kind: SpanKind,
        span_name: &str,
        msg: Option<&str>,
        machine: Option<&str>,
    ) -> OwnedBlock {
        let mut inner = self.inner.lock().unwrap();
        let span = inner.begin(kind, span_name, machine, false);
        if let Some(msg) = msg {
            inner.emit(&Event::BlockStart { machine, msg });
        }
        OwnedBlock {
            msg: msg.map(str::to_string),
            machine: machine.map(str::to_string),
            start: Instant::now(),
            span,
        }
    }

    /// Closes a block normally (prints its "(finished: ...)" line).
    pub fn close(&self, block: &OwnedBlock) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(msg) = &block.msg {
            inner.emit(&Event::BlockEnd {
                machine: block.machine.as_deref(),
                msg,
                seconds: block.start.elapsed().as_secs_f64(),
            });
        }
        inner.end(block.span, SpanStatus::Ok);
    }

    /// Closes a block that failed with `error` (no "finished" line, as upstream).
    pub fn close_failed(&self, block: &OwnedBlock, error: &str) {
        self.end_span(block.span, SpanStatus::Error(error.to_string()));
    }
}

/// An open nested block.
pub struct Block<'a> {
    logger: &'a Logger,
    msg: String,
    machine: Option<String>,
    start: Instant,
    span: SpanId,
    failure: Mutex<Option<String>>,
    finished: bool,
}

impl Block<'_> {
    /// Sets an attribute of the block's span.
    pub fn attr(&self, key: &'static str, value: impl Into<AttrValue>) {
        self.logger.span_attr(self.span, key, value.into());
    }

    /// Records `error` as the reason the block fails (when it is dropped unfinished).
    pub fn fail(&self, error: &impl std::fmt::Display) {
        *self.failure.lock().unwrap() = Some(error.to_string());
    }

    /// Records `error` as the block's failure and hands it back.
    pub fn fail_with<E: std::fmt::Display>(&self, error: E) -> E {
        self.fail(&error);
        error
    }

    /// Passes `r` through, recording its error as the block's failure.
    pub fn check<T, E: std::fmt::Display>(&self, r: Result<T, E>) -> Result<T, E> {
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    /// Closes the block with its "(finished: ...)" line.
    pub fn finish(mut self) {
        self.finished = true;
        let mut inner = self.logger.inner.lock().unwrap();
        inner.emit(&Event::BlockEnd {
            machine: self.machine.as_deref(),
            msg: &self.msg,
            seconds: self.start.elapsed().as_secs_f64(),
        });
        inner.end(self.span, SpanStatus::Ok);
    }

    /// Runs `f` inside the block, finishing it when `f` succeeds.
    pub fn run<T, E: std::fmt::Display>(self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let r = self.check(f());
        if r.is_ok() {
            self.finish();
        }
        r
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let failure = self.failure.lock().unwrap().take();
            let message = failure.unwrap_or_else(|| "failed".to_string());
            self.logger.end_span(self.span, SpanStatus::Error(message));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::terminal::prefixed;

    /// Records every event as the terminal would print it, without colour.
    pub struct Capture(pub Arc<Mutex<Vec<String>>>);

    impl Reporter for Capture {
        fn event(&mut self, event: &Event<'_>) {
            let t = TerminalReporter::new(false, Arc::new(AtomicBool::new(true)), false);
            let line = match *event {
                Event::Line { machine, msg } => prefixed(machine, msg),
                Event::BlockStart { machine, msg } => prefixed(machine, msg),
                Event::BlockEnd { machine, msg, .. } => {
                    prefixed(machine, &format!("(finished: {msg})"))
                }
                Event::Serial { machine, line } => format!("{machine} # {line}"),
                Event::TestError { msg } => format!("!!! {msg}"),
                _ => match t.render(event) {
                    Some(line) => line,
                    None => return,
                },
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
