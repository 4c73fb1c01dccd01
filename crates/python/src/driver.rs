//! `Driver`: VLANs, machines, the global timer and cleanup.

use std::sync::Arc;

use pyo3::prelude::*;

use ntng_engine::driver as engine;

use crate::config::Config;
use crate::errors::to_pyerr;
use crate::logger::Logger;
use crate::machine::MachineHandle;

#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct Driver {
    inner: Arc<engine::Driver>,
    /// The logger's reports (the HTML report reads the timeline).
    reports: Arc<ntng_engine::reporters::Reports>,
}

/// A running VLAN (upstream's `VLan`).
#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct VLan {
    /// The VLAN number.
    #[pyo3(get)]
    nr: u32,
    /// The `vde_switch` pid.
    #[pyo3(get)]
    pid: u32,
    /// The switch's socket directory.
    #[pyo3(get)]
    socket_dir: String,
    /// For `partition`/`heal`.
    driver: Arc<engine::Driver>,
}

#[pymethods]
impl VLan {
    fn __repr__(&self) -> String {
        format!("<VLan {}>", self.nr)
    }

    /// Partitions this VLAN: machines in different `groups` cannot exchange packets on it
    /// (`driver.partition(groups, vlan=nr)`).
    fn partition(&self, py: Python<'_>, groups: &Bound<'_, PyAny>) -> PyResult<()> {
        let groups = crate::netem::groups(groups)?;
        let (d, nr) = (self.driver.clone(), i64::from(self.nr));
        py.detach(move || d.partition(&groups, nr))
            .map_err(to_pyerr)
    }

    /// Heals this VLAN's partition.
    fn heal(&self, py: Python<'_>) -> PyResult<()> {
        let (d, nr) = (self.driver.clone(), i64::from(self.nr));
        py.detach(move || d.heal(Some(nr))).map_err(to_pyerr)
    }
}

#[pymethods]
impl Driver {
    /// Starts the VLANs and builds the machines (none is started).
    #[new]
    fn new(py: Python<'_>, config: &Config, logger: &Logger) -> PyResult<Self> {
        let cfg = config.inner.clone();
        let log = logger.inner.clone();
        let inner = py
            .detach(|| engine::Driver::new(cfg, log))
            .map_err(to_pyerr)?;
        Ok(Driver {
            inner: Arc::new(inner),
            reports: logger.reports.clone(),
        })
    }

    /// The machines, sorted by name.
    fn machine_handles(&self) -> Vec<MachineHandle> {
        self.inner
            .machines()
            .iter()
            .map(|m| MachineHandle { inner: m.clone() })
            .collect()
    }

    /// The VLANs.
    fn vlans(&self) -> Vec<VLan> {
        self.inner
            .vlans()
            .into_iter()
            .map(|(nr, pid, dir)| VLan {
                nr,
                pid,
                socket_dir: dir.display().to_string(),
                driver: self.inner.clone(),
            })
            .collect()
    }

    /// Partitions VLAN `vlan`: machines in different `groups` cannot exchange packets on it.
    #[pyo3(signature = (groups, vlan=1))]
    fn partition(&self, py: Python<'_>, groups: &Bound<'_, PyAny>, vlan: i64) -> PyResult<()> {
        let groups = crate::netem::groups(groups)?;
        let d = self.inner.clone();
        py.detach(move || d.partition(&groups, vlan))
            .map_err(to_pyerr)
    }

    /// Heals the partition of VLAN `vlan`, or of every VLAN (None).
    #[pyo3(signature = (vlan=None))]
    fn heal(&self, py: Python<'_>, vlan: Option<i64>) -> PyResult<()> {
        let d = self.inner.clone();
        py.detach(move || d.heal(vlan)).map_err(to_pyerr)
    }

    /// `QEMU_VDE_SOCKET_<n>` variables, for `os.environ`.
    fn vlan_env(&self) -> Vec<(String, String)> {
        self.inner.vlan_env().to_vec()
    }

    /// The driver's tmp dir.
    #[getter]
    fn tmp_dir(&self) -> String {
        self.inner.tmp_dir().display().to_string()
    }

    /// Starts every machine in parallel.
    fn start_all(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.inner.clone();
        py.detach(move || d.start_all()).map_err(to_pyerr)
    }

    /// Snapshots every running machine as `name`, consistently.
    fn snapshot_all(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let d = self.inner.clone();
        py.detach(move || d.snapshot_all(&name)).map_err(to_pyerr)
    }

    /// Restores every running machine to snapshot `name`.
    fn restore_all(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let d = self.inner.clone();
        py.detach(move || d.restore_all(&name)).map_err(to_pyerr)
    }

    /// Waits for every machine to stop.
    fn join_all(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.inner.clone();
        py.detach(move || d.join_all()).map_err(to_pyerr)
    }

    /// `sync` on every machine that is up.
    fn sync_all(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.inner.clone();
        py.detach(move || d.sync_all()).map_err(to_pyerr)
    }

    /// Starts the global timer.
    fn start_timer(&self) {
        self.inner.start_timer();
    }

    /// Cancels the global timer.
    fn cancel_timer(&self) {
        self.inner.cancel_timer();
    }

    /// True from `start_timer()` until the timer fired and ended, or was cancelled.
    fn timer_alive(&self) -> bool {
        self.inner.timer_alive()
    }

    /// Upstream's `terminate_test()`: kills every machine and sends SIGTERM to the process.
    fn terminate_test(&self, py: Python<'_>) {
        let d = self.inner.clone();
        py.detach(move || d.terminate_test());
    }

    /// Releases every machine and stops the VLANs.
    fn cleanup(&self, py: Python<'_>) {
        let d = self.inner.clone();
        py.detach(move || d.cleanup());
    }

    /// Writes the HTML report (spans, failures, console logs, screenshots) to `path`.
    fn write_html_report(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        let (d, reports) = (self.inner.clone(), self.reports.clone());
        py.detach(move || d.write_html_report(std::path::Path::new(path), &reports))
            .map_err(to_pyerr)
    }

    /// A machine not registered with the driver.
    #[pyo3(signature = (start_command, name=None, keep_machine_state=false))]
    fn create_machine(
        &self,
        py: Python<'_>,
        start_command: &str,
        name: Option<&str>,
        keep_machine_state: bool,
    ) -> PyResult<MachineHandle> {
        let d = self.inner.clone();
        let m = py
            .detach(move || d.create_machine(start_command, name, keep_machine_state))
            .map_err(to_pyerr)?;
        Ok(MachineHandle { inner: Arc::new(m) })
    }
}
