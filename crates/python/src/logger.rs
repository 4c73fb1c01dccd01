//! `Logger`: the run's log (upstream's `log` symbol).

use std::sync::Arc;

use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use ntng_engine::log::{self as engine, OwnedBlock};
use ntng_engine::reporters::{self, Reports};
use ntng_engine::trace::SpanKind;

use crate::config::Config;

#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct Logger {
    pub inner: Arc<engine::Logger>,
    /// What the end of the run reads back: JUnit, the timeline.
    pub reports: Arc<Reports>,
}

fn machine_attr(attrs: Option<&Bound<'_, PyDict>>) -> PyResult<Option<String>> {
    match attrs {
        Some(a) => match a.get_item("machine")? {
            Some(m) => Ok(Some(m.str()?.to_string())),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

#[pymethods]
impl Logger {
    /// A logger printing upstream's format to stderr (coloured when `color`; a boot status
    /// line when `progress`).
    #[new]
    #[pyo3(signature = (color=false, progress=false))]
    fn new(color: bool, progress: bool) -> Self {
        let (logger, reports) = reporters::terminal_logger(color, progress);
        Logger {
            inner: Arc::new(logger),
            reports: Arc::new(reports),
        }
    }

    /// Adds the reporters `config` asks for (the XML log, the OTLP exporter; JUnit when
    /// `junit`) and begins the run's span.
    #[pyo3(signature = (config, name, junit=false))]
    fn start_run(&self, config: &Config, name: &str, junit: bool) {
        self.reports
            .start_run(&self.inner, &config.inner.reporting, name, junit);
    }

    /// Ends the run's span (and any still open), closes the XML log, flushes exported spans.
    #[pyo3(signature = (failure=None))]
    fn finish_run(&self, py: Python<'_>, failure: Option<&str>) {
        let l = self.inner.clone();
        py.detach(move || l.finish_run(failure));
    }

    /// Whether spans are exported over OTLP.
    #[getter]
    fn exporting(&self) -> bool {
        self.inner.exporting()
    }

    /// The timing summary's lines (total, boots, slowest operations).
    fn timing_summary(&self) -> Vec<String> {
        self.reports.timing_summary()
    }

    /// A test's span: `with log.test("name") as t: ...`; `t.fail(message)` marks it failed.
    fn test(&self, name: &str) -> LogBlock {
        LogBlock {
            logger: self.inner.clone(),
            message: name.to_string(),
            machine: None,
            kind: BlockKind::Test,
            open: std::sync::Mutex::new(None),
            failure: std::sync::Mutex::new(None),
        }
    }

    /// Writes the JUnit report (when `start_run` was asked for JUnit).
    fn write_junit(&self, path: &str) -> PyResult<()> {
        self.reports
            .write_junit(std::path::Path::new(path))
            .map_err(Into::into)
    }

    /// Logs a message; `attrs["machine"]` prefixes it with the machine's name.
    #[pyo3(signature = (message, attributes=None))]
    fn log(&self, message: &str, attributes: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        self.inner
            .log(message, machine_attr(attributes)?.as_deref());
        Ok(())
    }

    /// Same as `log`.
    #[pyo3(signature = (*args, **kwargs))]
    fn info(&self, args: Vec<String>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        self.inner
            .log(&args.join(" "), machine_attr(kwargs)?.as_deref());
        Ok(())
    }

    /// Logs a warning.
    #[pyo3(signature = (*args, **_kwargs))]
    fn warning(&self, args: Vec<String>, _kwargs: Option<&Bound<'_, PyDict>>) {
        self.inner.warning(&args.join(" "));
    }

    /// Logs an error and marks the run failed (upstream also exits; nixos-test-ng does not).
    #[pyo3(signature = (*args, **_kwargs))]
    fn error(&self, args: Vec<String>, _kwargs: Option<&Bound<'_, PyDict>>) {
        self.inner.error(&args.join(" "));
    }

    /// Logs a test error with the red `!!! ` prefix (the running subtest fails in JUnit;
    /// the run does not fail, as upstream).
    #[pyo3(signature = (*args, **_kwargs))]
    fn log_test_error(&self, args: Vec<String>, _kwargs: Option<&Bound<'_, PyDict>>) {
        self.inner.test_error(&args.join(" "));
    }

    /// Logs a console line of `machine`.
    fn log_serial(&self, message: &str, machine: &str) {
        self.inner.serial(machine, message);
    }

    /// Turns the echo of console lines on or off.
    fn print_serial_logs(&self, enable: bool) {
        self.inner.set_print_serial(enable);
    }

    /// True once `error()` was called: the run fails even if nothing escaped the script.
    #[getter]
    fn failed(&self) -> bool {
        self.inner.failed()
    }

    /// A nested block: `with log.nested("msg"): ...`.
    #[pyo3(signature = (message, attributes=None))]
    fn nested(&self, message: &str, attributes: Option<&Bound<'_, PyDict>>) -> PyResult<LogBlock> {
        Ok(LogBlock {
            logger: self.inner.clone(),
            message: message.to_string(),
            machine: machine_attr(attributes)?,
            kind: BlockKind::Nested,
            open: std::sync::Mutex::new(None),
            failure: std::sync::Mutex::new(None),
        })
    }

    /// A subtest block: a nested block named `subtest: <name>` and a JUnit case.
    fn subtest(&self, name: &str) -> LogBlock {
        LogBlock {
            logger: self.inner.clone(),
            message: name.to_string(),
            machine: None,
            kind: BlockKind::Subtest,
            open: std::sync::Mutex::new(None),
            failure: std::sync::Mutex::new(None),
        }
    }
}

impl LogBlock {
    /// A nested block attributed to a machine.
    pub fn for_machine(logger: Arc<engine::Logger>, message: &str, machine: &str) -> Self {
        LogBlock {
            logger,
            message: message.to_string(),
            machine: Some(machine.to_string()),
            kind: BlockKind::Nested,
            open: std::sync::Mutex::new(None),
            failure: std::sync::Mutex::new(None),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Nested,
    Subtest,
    Test,
}

/// A context manager for a nested block, a subtest or a test.
#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct LogBlock {
    logger: Arc<engine::Logger>,
    message: String,
    machine: Option<String>,
    kind: BlockKind,
    open: std::sync::Mutex<Option<OwnedBlock>>,
    /// A failure set with `fail()` (a test whose outcome is known before the block ends).
    failure: std::sync::Mutex<Option<String>>,
}

fn exception_text(e: &Bound<'_, PyAny>) -> PyResult<String> {
    let name = e.get_type().name()?.to_string();
    Ok(format!("{name}: {}", e.str()?))
}

#[pymethods]
impl LogBlock {
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        let me = slf.get();
        let block = match me.kind {
            BlockKind::Nested => me.logger.open(&me.message, me.machine.as_deref()),
            BlockKind::Subtest => me.logger.open_subtest(&me.message),
            BlockKind::Test => me.logger.open_span(SpanKind::Test, &me.message, None, None),
        };
        *me.open.lock().unwrap() = Some(block);
        slf
    }

    /// Marks the block failed without raising, as if `error` (an exception, or a message)
    /// had escaped it: its span fails and a subtest logs its failure now.
    fn fail(&self, error: &Bound<'_, PyAny>) -> PyResult<()> {
        let (span_text, error_text) = if error.is_instance_of::<PyBaseException>() {
            (exception_text(error)?, error.str()?.to_string())
        } else {
            let text = error.str()?.to_string();
            (text.clone(), text)
        };
        if let Some(block) = self.open.lock().unwrap().as_mut() {
            self.logger.subtest_failed(block, &error_text);
        }
        *self.failure.lock().unwrap() = Some(span_text);
        Ok(())
    }

    #[pyo3(signature = (exc_type=None, exc=None, _tb=None))]
    fn __exit__(
        &self,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let raised = exc_type.is_some_and(|t| !t.is_none());
        let Some(mut block) = self.open.lock().unwrap().take() else {
            return Ok(false);
        };
        let failure = match (raised, exc, self.failure.lock().unwrap().take()) {
            (true, Some(e), _) => {
                let span_text = exception_text(e)?;
                let text = e.str().map(|s| s.to_string()).unwrap_or_default();
                self.logger.subtest_failed(&mut block, &text);
                Some(span_text)
            }
            (true, None, _) => {
                self.logger.subtest_failed(&mut block, "");
                Some(String::new())
            }
            (false, _, set) => set,
        };
        match &failure {
            None => self.logger.close(&block),
            Some(f) => self.logger.close_failed(&block, f),
        }
        Ok(false)
    }
}
