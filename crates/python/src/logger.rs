//! `Logger`: the run's log (upstream's `log` symbol).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use ntng_engine::log::{self as engine, OwnedBlock};

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
    /// A logger printing upstream's format to stderr (coloured when `color`).
    #[new]
    #[pyo3(signature = (color=false))]
    fn new(color: bool) -> Self {
        Logger {
            inner: Arc::new(engine::Logger::new(color)),
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
        self.inner.test_error(&args.join(" "));
    }

    /// Logs a test error with the red `!!! ` prefix.
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

    /// True once a test error was logged.
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
            subtest: false,
            open: std::sync::Mutex::new(None),
        })
    }

    /// A subtest block: a nested block named `subtest: <name>` and a JUnit case.
    fn subtest(&self, name: &str) -> LogBlock {
        LogBlock {
            logger: self.inner.clone(),
            message: name.to_string(),
            machine: None,
            subtest: true,
            open: std::sync::Mutex::new(None),
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
            subtest: false,
            open: std::sync::Mutex::new(None),
        }
    }
}

/// A context manager for a nested block (or a subtest).
#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct LogBlock {
    logger: Arc<engine::Logger>,
    message: String,
    machine: Option<String>,
    subtest: bool,
    open: std::sync::Mutex<Option<OwnedBlock>>,
}

#[pymethods]
impl LogBlock {
    fn __enter__(&self) {
        let msg = if self.subtest {
            self.logger.subtest_start(&self.message);
            format!("subtest: {}", self.message)
        } else {
            self.message.clone()
        };
        *self.open.lock().unwrap() = Some(self.logger.open(&msg, self.machine.as_deref()));
    }

    #[pyo3(signature = (exc_type=None, exc=None, _tb=None))]
    fn __exit__(
        &self,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let failed = exc_type.is_some_and(|t| !t.is_none());
        let block = self.open.lock().unwrap().take();
        if self.subtest {
            let failure = if failed {
                let text = exc
                    .map(|e| e.str().map(|s| s.to_string()))
                    .transpose()?
                    .unwrap_or_default();
                let msg = format!("Test \"{}\" failed with error: \"{}\"", self.message, text);
                self.logger.test_error(&msg);
                Some(msg)
            } else {
                None
            };
            if let (Some(b), false) = (&block, failed) {
                self.logger.close(b);
            }
            self.logger.subtest_end(&self.message, failure.as_deref());
        } else if let (Some(b), false) = (&block, failed) {
            self.logger.close(b);
        }
        Ok(false)
    }
}
