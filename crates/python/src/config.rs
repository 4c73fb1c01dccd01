//! `Config`: the validated run description, read-only from Python.

use std::collections::HashMap;

use pyo3::prelude::*;

use ntng_engine::config as engine;
use ntng_engine::kind::MachineKind as EngineKind;

/// A kind of machine and its facts (the engine's table, exposed once).
#[pyclass(frozen, module = "nixos_test_ng._native", name = "MachineKind")]
pub struct MachineKind {
    inner: EngineKind,
}

#[pymethods]
impl MachineKind {
    /// The engine's name ("qemu", "nspawn").
    #[getter]
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    /// The word of machine specs ("vm", "nspawn").
    #[getter]
    fn spec_word(&self) -> &'static str {
        self.inner.spec_word()
    }
    /// The end of the start script's name ("-vm", "-nspawn").
    #[getter]
    fn script_suffix(&self) -> &'static str {
        self.inner.script_suffix()
    }
    /// The Python class of such machines ("QemuMachine", "NspawnMachine").
    #[getter]
    fn python_class(&self) -> &'static str {
        self.inner.python_class()
    }
    /// The driver must run as root.
    #[getter]
    fn needs_root(&self) -> bool {
        self.inner.needs_root()
    }
    /// What the log calls such a machine ("VM", "container").
    #[getter]
    fn noun(&self) -> &'static str {
        self.inner.noun()
    }
    /// The backend's name ("QEMU", "systemd-nspawn").
    #[getter]
    fn backend(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn __repr__(&self) -> String {
        format!("<MachineKind {}>", self.inner.name())
    }
}

/// Every kind of machine.
#[pyfunction]
pub fn machine_kinds() -> Vec<MachineKind> {
    EngineKind::ALL
        .into_iter()
        .map(|inner| MachineKind { inner })
        .collect()
}

/// The kind a word names: its name, its spec word or an alias ("container").
#[pyfunction]
pub fn machine_kind(word: &str) -> PyResult<MachineKind> {
    parse_kind(word).map(|inner| MachineKind { inner })
}

/// The kind a word names, or a `ValueError` listing the words there are.
pub fn parse_kind(word: &str) -> PyResult<EngineKind> {
    EngineKind::parse(word).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "kind must be {}, not {word:?}",
            EngineKind::words()
        ))
    })
}

#[pyclass(frozen, module = "nixos_test_ng._native")]
pub struct Config {
    pub inner: engine::Config,
}

impl From<engine::Config> for Config {
    fn from(inner: engine::Config) -> Self {
        Config { inner }
    }
}

#[pymethods]
impl Config {
    /// `(name, start_script, kind)` for each machine; kind is "qemu", "nspawn",
    /// "firecracker" or "cloud-hypervisor"; start_script is "" for a machine `--config`
    /// configured inline.
    #[getter]
    fn machines(&self) -> Vec<(String, String, &'static str)> {
        self.inner
            .machines
            .iter()
            .map(|m| {
                let script = m.start_script.display().to_string();
                (m.name.clone(), script, m.kind.name())
            })
            .collect()
    }
    #[getter]
    fn vlans(&self) -> Vec<u32> {
        self.inner.vlans.clone()
    }
    #[getter]
    fn global_timeout(&self) -> f64 {
        self.inner.global_timeout.as_secs_f64()
    }
    #[getter]
    fn out_dir(&self) -> String {
        self.inner.out_dir.display().to_string()
    }
    #[getter]
    fn keep_machine_state(&self) -> bool {
        self.inner.keep_machine_state
    }
    #[getter]
    fn interactive(&self) -> bool {
        self.inner.interactive
    }
    #[getter]
    fn vnc(&self) -> bool {
        self.inner.vnc
    }
    #[getter]
    fn keep_going(&self) -> bool {
        self.inner.keep_going
    }
    #[getter]
    fn skip_check(&self) -> bool {
        self.inner.skip_check
    }
    #[getter]
    fn pytest_args(&self) -> Vec<String> {
        self.inner.pytest_args.clone()
    }
    #[getter]
    fn junit_xml(&self) -> Option<String> {
        self.inner
            .junit_xml
            .as_ref()
            .map(|p| p.display().to_string())
    }
    #[getter]
    fn html_report(&self) -> Option<String> {
        self.inner
            .html_report
            .as_ref()
            .map(|p| p.display().to_string())
    }
    #[getter]
    fn test_script(&self) -> Option<String> {
        self.inner
            .test_script
            .as_ref()
            .map(|p| p.display().to_string())
    }
    #[getter]
    fn debug_hook_attach(&self) -> Option<String> {
        self.inner.debug_hook_attach.clone()
    }
    #[getter]
    fn dump_vsocks(&self) -> Option<u32> {
        self.inner.dump_vsocks
    }
    #[getter]
    fn log_level(&self) -> String {
        format!("{:?}", self.inner.log_level).to_lowercase()
    }
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }
    /// This configuration with the XML log, OTLP exporter, trace parent, transport and boot
    /// cache `env` asks for (`LOGFILE`, `OTEL_*`, `TRACEPARENT`, `NIXOS_TEST_NG_TRANSPORT`,
    /// `NIXOS_TEST_NG_BOOT_CACHE*`) instead of its own.
    fn with_reporting_from(&self, env: HashMap<String, String>) -> PyResult<Config> {
        let mut inner = self.inner.clone();
        inner.apply_env(&env).map_err(crate::errors::to_pyerr)?;
        Ok(Config { inner })
    }
    /// This configuration as worker `worker` of several drivers running the same machines at
    /// once (pytest-xdist): a tmp dir, output directory and report file names of its own.
    fn for_worker(&self, worker: &str) -> PyResult<Config> {
        let inner = self
            .inner
            .clone()
            .for_worker(worker)
            .map_err(crate::errors::to_pyerr)?;
        Ok(Config { inner })
    }
    /// Upstream's XML log (`LOGFILE`), or None.
    #[getter]
    fn xml_log(&self) -> Option<String> {
        self.inner
            .reporting
            .xml_log
            .as_ref()
            .map(|p| p.display().to_string())
    }
    /// The worker this configuration is for (`for_worker`), or None.
    #[getter]
    fn worker(&self) -> Option<String> {
        self.inner.worker.clone()
    }
}
