//! `Logger`: the run's log (upstream's `log` symbol).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use std::collections::HashMap;

use ntng_engine::log::{self as engine, OwnedBlock};
use ntng_engine::trace::SpanKind;

#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct Logger {
    pub inner: Arc<engine::Logger>,
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
        Logger {
            inner: Arc::new(engine::Logger::new(color, progress)),
        }
    }

    /// Begins the run's span; exports spans when the `OTEL_*` variables of `env` say so.
    fn start_run(&self, env: HashMap<String, String>, name: &str) {
        self.inner.start_run(&env, name);
    }

    /// Ends the run's span (and any still open), flushes exported spans.
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
        self.inner.timing_summary()
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

    /// Starts collecting JUnit test cases.
    fn enable_junit(&self) {
        self.inner.enable_junit();
    }

    /// Writes the JUnit report.
    fn write_junit(&self, path: &str) -> PyResult<()> {
        self.inner
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

fn exception_text(exc: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    let Some(e) = exc else {
        return Ok(String::new());
    };
    let name = e.get_type().name()?.to_string();
    Ok(format!("{name}: {}", e.str()?))
}

#[pymethods]
impl LogBlock {
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        let me = slf.get();
        let block = match me.kind {
            BlockKind::Nested => me.logger.open(&me.message, me.machine.as_deref()),
            BlockKind::Subtest => {
                me.logger.subtest_start(&me.message);
                me.logger.open_span(
                    SpanKind::Subtest,
                    &me.message,
                    Some(&format!("subtest: {}", me.message)),
                    None,
                )
            }
            BlockKind::Test => me.logger.open_span(SpanKind::Test, &me.message, None, None),
        };
        *me.open.lock().unwrap() = Some(block);
        slf
    }

    /// Marks the block failed with `message` (it still ends at `__exit__`).
    fn fail(&self, message: &str) {
        *self.failure.lock().unwrap() = Some(message.to_string());
    }

    #[pyo3(signature = (exc_type=None, exc=None, _tb=None))]
    fn __exit__(
        &self,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let raised = exc_type.is_some_and(|t| !t.is_none());
        let Some(block) = self.open.lock().unwrap().take() else {
            return Ok(false);
        };
        let failure = match (raised, self.failure.lock().unwrap().take()) {
            (true, _) => Some(exception_text(exc)?),
            (false, set) => set,
        };
        if self.kind == BlockKind::Subtest {
            let logged = raised.then(|| {
                let text = exc.and_then(|e| e.str().ok()).map(|s| s.to_string());
                let msg = format!(
                    "Test \"{}\" failed with error: \"{}\"",
                    self.message,
                    text.unwrap_or_default()
                );
                self.logger.test_error(&msg);
                msg
            });
            match &failure {
                None => self.logger.close(&block),
                Some(f) => self.logger.close_failed(&block, f),
            }
            self.logger.subtest_end(&self.message, logged.as_deref());
        } else {
            match &failure {
                None => self.logger.close(&block),
                Some(f) => self.logger.close_failed(&block, f),
            }
        }
        Ok(false)
    }
}
