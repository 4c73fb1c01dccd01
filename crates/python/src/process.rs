//! `MachineProcess`: a machine's process as upstream's `subprocess.Popen` shows it to scripts.

use std::sync::Arc;

use pyo3::prelude::*;

use ntng_engine::interrupt::Deadline;
use ntng_engine::process::ChildProcess;

use crate::convert::duration;
use crate::errors::to_pyerr;

/// The process a machine runs (the start script, which execs QEMU or systemd-nspawn), with
/// the members of `subprocess.Popen` that scripts use. The driver reads its output; write to
/// the serial console with `machine.send_console()`. Signals go to the whole process group
/// (the start script and what it started), so nothing is left behind.
#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct MachineProcess {
    inner: Arc<ChildProcess>,
}

impl MachineProcess {
    pub fn new(inner: Arc<ChildProcess>) -> Self {
        MachineProcess { inner }
    }
}

#[pymethods]
impl MachineProcess {
    fn __repr__(&self) -> String {
        format!(
            "<MachineProcess pid={} returncode={:?}>",
            self.inner.pid(),
            self.inner.returncode()
        )
    }

    /// The process id.
    #[getter]
    fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// None while it runs; then its exit code, or minus the signal that killed it.
    #[getter]
    fn returncode(&self) -> Option<i32> {
        self.inner.returncode()
    }

    /// `returncode`, without waiting.
    fn poll(&self) -> Option<i32> {
        self.inner.returncode()
    }

    /// Waits for the process to exit (at most `timeout` seconds: then raises
    /// `subprocess.TimeoutExpired`); returns `returncode`.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<i32> {
        let limit = duration(timeout)?;
        let p = self.inner.clone();
        let ended = py
            .detach(move || p.wait_until(Deadline::after(limit)))
            .map_err(to_pyerr)?;
        match (ended, self.inner.returncode()) {
            (Some(_), Some(code)) => Ok(code),
            _ => {
                let expired = py.import("subprocess")?.getattr("TimeoutExpired")?;
                let secs = limit.map(|d| d.as_secs_f64()).unwrap_or_default();
                Err(PyErr::from_value(
                    expired.call1((format!("pid {}", self.inner.pid()), secs))?,
                ))
            }
        }
    }

    /// Sends `signal` to the process group.
    fn send_signal(&self, signal: i32) {
        self.inner.signal_group(signal);
    }

    /// SIGTERM to the process group.
    fn terminate(&self) {
        self.inner.terminate();
    }

    /// SIGKILL to the process group; returns once the process is reaped.
    fn kill(&self, py: Python<'_>) {
        let p = self.inner.clone();
        py.detach(move || p.kill());
    }
}
