//! `Config`: the validated run description, read-only from Python.

use std::collections::HashMap;

use pyo3::prelude::*;

use ntng_engine::config::{self as engine, MachineKind};

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
    /// `(name, start_script, kind)` for each machine; kind is "qemu" or "nspawn".
    #[getter]
    fn machines(&self) -> Vec<(String, String, &'static str)> {
        self.inner
            .machines
            .iter()
            .map(|m| {
                let kind = match m.kind {
                    MachineKind::Qemu => "qemu",
                    MachineKind::Nspawn => "nspawn",
                };
                (m.name.clone(), m.start_script.display().to_string(), kind)
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
    /// This configuration with the XML log, OTLP exporter and trace parent `env` asks for
    /// (`LOGFILE`, `OTEL_*`, `TRACEPARENT`) instead of its own.
    fn with_reporting_from(&self, env: HashMap<String, String>) -> Config {
        let mut inner = self.inner.clone();
        inner.reporting = engine::Reporting::from_env(&env);
        Config { inner }
    }
}
