//! The run's log: every message, nested block, serial line and subtest goes through
//! [`Logger`], which turns it into [`Event`]s for one [`Fanout`] of reporters, built at the
//! edge ([`crate::reporters`]). Every nested block is also a span ([`crate::trace`]): the
//! logger keeps the span table and the trace context. It names no reporter. Nothing here
//! exits the process.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::event::{Event, Fanout, Reporter};
use crate::trace::{
    attr, traceparent, AttrValue, SpanId, SpanKind, SpanRecord, SpanStatus, SpanTable, TraceId,
};

struct Inner {
    reporters: Fanout,
    spans: SpanTable,
    run: Option<SpanId>,
    /// Spans are exported: guest commands get a `TRACEPARENT`.
    exporting: bool,
    failed: bool,
}

impl Inner {
    fn emit(&mut self, event: &Event<'_>) {
        self.reporters.event(event);
        self.report_failures();
    }

    /// A reporter that could not write its file (a full disk) fails the run, with a test
    /// error naming the file; that reporter writes nothing more, so this does not recurse.
    fn report_failures(&mut self) {
        for msg in self.reporters.take_failures() {
            self.failed = true;
            self.reporters.event(&Event::TestError { msg: &msg });
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

/// Upstream's line for a subtest that failed with `error`.
fn subtest_failure(name: &str, error: &str) -> String {
    format!("Test \"{name}\" failed with error: \"{error}\"")
}

/// The log of one run. Cheap to share (`Arc`).
pub struct Logger {
    inner: Mutex<Inner>,
    print_serial: AtomicBool,
}

impl Default for Logger {
    /// A logger without reporters.
    fn default() -> Self {
        Logger::new(Fanout::default())
    }
}

impl Logger {
    /// A logger handing its events to `reporters`.
    pub fn new(reporters: Fanout) -> Self {
        Logger {
            inner: Mutex::new(Inner {
                reporters,
                spans: SpanTable::new(TraceId::random(), None),
                run: None,
                exporting: false,
                failed: false,
            }),
            print_serial: AtomicBool::new(true),
        }
    }

    /// Adds a reporter: it sees the events from now on.
    pub fn add_reporter(&self, reporter: Box<dyn Reporter>) {
        self.inner.lock().unwrap().reporters.push(reporter);
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

    /// Logs a console line of `machine`, its control characters (ANSI escapes, NUL) escaped
    /// so the log stays readable (see [`crate::console::printable`]).
    pub fn serial(&self, machine: &str, line: &str) {
        let shown = self.print_serial();
        self.emit(Event::Serial {
            machine,
            line: &crate::console::printable(line),
            shown,
        });
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
}

/// Spans beyond nested blocks: the run, tests, boots, and the trace context.
impl Logger {
    /// Begins the run's span, a child of `parent` (a `TRACEPARENT`) when given; `exporting`
    /// says that spans leave the process (guest commands then get a `TRACEPARENT`).
    pub fn start_run(&self, name: &str, parent: Option<(TraceId, SpanId)>, exporting: bool) {
        let mut inner = self.inner.lock().unwrap();
        if let Some((trace, parent)) = parent {
            inner.spans = SpanTable::new(trace, Some(parent));
        }
        inner.exporting = exporting;
        let run = inner.begin(SpanKind::Run, name, None, false);
        inner.run = Some(run);
    }

    /// Ends every open span (those still open fail with `interrupted` or the run's failure),
    /// ends the run's span, and lets every reporter write what is left (the XML log closes,
    /// exported spans are flushed).
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
        inner.reporters.finish();
        inner.report_failures();
        inner.exporting = false;
    }

    /// Whether spans are exported (and guest commands get a `TRACEPARENT`).
    pub fn exporting(&self) -> bool {
        self.inner.lock().unwrap().exporting
    }

    /// The `TRACEPARENT` for guest commands of the calling thread while spans are exported:
    /// the span they run in outside every operation (see [`SpanTable::context`]).
    pub fn command_traceparent(&self) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        if !inner.exporting {
            return None;
        }
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

    /// The spans still open (the HTML report shows them as running).
    pub fn open_spans(&self) -> Vec<SpanRecord> {
        self.inner
            .lock()
            .unwrap()
            .spans
            .open_spans()
            .cloned()
            .collect()
    }
}

/// An open block that owns its data (for callers that cannot hold a borrow, like a Python
/// `with` statement). Close it with [`Logger::close`] or [`Logger::close_failed`].
pub struct OwnedBlock {
    msg: Option<String>,
    machine: Option<String>,
    start: Instant,
    span: SpanId,
    /// Set for a subtest.
    subtest: Option<Subtest>,
}

struct Subtest {
    name: String,
    /// The line logged for its failure.
    failure: Option<String>,
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
            subtest: None,
        }
    }

    /// Opens a subtest: a JUnit case, a span, and the nested block `subtest: <name>`.
    pub fn open_subtest(&self, name: &str) -> OwnedBlock {
        self.emit(Event::SubtestStart { name });
        let mut block = self.open_span(
            SpanKind::Subtest,
            name,
            Some(&format!("subtest: {name}")),
            None,
        );
        block.subtest = Some(Subtest {
            name: name.to_string(),
            failure: None,
        });
        block
    }

    /// Logs that the subtest of `block` failed with `error`, in upstream's words
    /// (`Test "<name>" failed with error: "<error>"`), once; the subtest fails in JUnit.
    /// Does nothing for a block that is not a subtest.
    pub fn subtest_failed(&self, block: &mut OwnedBlock, error: &str) {
        let Some(subtest) = block.subtest.as_mut() else {
            return;
        };
        if subtest.failure.is_none() {
            let line = subtest_failure(&subtest.name, error);
            self.test_error(&line);
            subtest.failure = Some(line);
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
        drop(inner);
        self.end_subtest(block);
    }

    /// Closes a block that failed with `error` (no "finished" line, as upstream).
    pub fn close_failed(&self, block: &OwnedBlock, error: &str) {
        self.end_span(block.span, SpanStatus::Error(error.to_string()));
        self.end_subtest(block);
    }

    fn end_subtest(&self, block: &OwnedBlock) {
        if let Some(subtest) = &block.subtest {
            self.emit(Event::SubtestEnd {
                name: &subtest.name,
                failure: subtest.failure.as_deref(),
            });
        }
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
mod tests {
    use std::sync::Arc;

    use super::*;

    fn prefixed(machine: Option<&str>, msg: &str) -> String {
        machine.map_or(msg.to_string(), |m| format!("{m}: {msg}"))
    }

    /// Records every event as the terminal would print it, without colour and durations.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Reporter for Capture {
        fn event(&mut self, event: &Event<'_>) {
            let line = match *event {
                Event::Line { machine, msg } | Event::BlockStart { machine, msg } => {
                    prefixed(machine, msg)
                }
                Event::BlockEnd { machine, msg, .. } => {
                    prefixed(machine, &format!("(finished: {msg})"))
                }
                Event::TestError { msg } => format!("!!! {msg}"),
                Event::SubtestEnd { name, failure } => format!("end {name}: {failure:?}"),
                _ => return,
            };
            self.0.lock().unwrap().push(line);
        }
    }

    fn capturing() -> (Logger, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Logger::new(Fanout::new(vec![Box::new(Capture(lines.clone()))]));
        (log, lines)
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

    #[test]
    fn a_failed_subtest_is_logged_once_in_upstreams_words() {
        let (log, lines) = capturing();
        let ok = log.open_subtest("fine");
        log.close(&ok);
        let mut failed = log.open_subtest("broken");
        log.subtest_failed(&mut failed, "boom");
        log.subtest_failed(&mut failed, "boom again");
        log.close_failed(&failed, "AssertionError: boom");
        let mut plain = log.open("not a subtest", None);
        log.subtest_failed(&mut plain, "ignored");
        log.close(&plain);
        let failure = "Test \"broken\" failed with error: \"boom\"";
        assert_eq!(
            *lines.lock().unwrap(),
            vec![
                "subtest: fine".to_string(),
                "(finished: subtest: fine)".to_string(),
                "end fine: None".to_string(),
                "subtest: broken".to_string(),
                format!("!!! {failure}"),
                format!("end broken: Some({failure:?})"),
                "not a subtest".to_string(),
                "(finished: not a subtest)".to_string(),
            ]
        );
    }
}
