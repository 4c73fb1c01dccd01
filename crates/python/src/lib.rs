//! Python bindings of the nixos-test-ng engine: conversions and GIL handling only.

mod boot_cache;
mod config;
mod convert;
mod driver;
mod errors;
mod logger;
mod machine;
mod netem;
mod process;

use std::collections::HashMap;

use pyo3::prelude::*;

/// The guest agent: a static executable built from this source tree with this module
/// (crates/python/build.rs), for the guest builder to install.
#[pyfunction]
fn agent_binary() -> &'static [u8] {
    include_bytes!(env!("NTNG_AGENT_BINARY"))
}

/// Parses the `nixos-test-driver` command line. Returns a `Config`, or the help text.
#[pyfunction]
fn parse_args(
    py: Python<'_>,
    argv: Vec<String>,
    env: HashMap<String, String>,
) -> PyResult<Py<PyAny>> {
    match ntng_engine::config::parse_args(&argv, &env).map_err(errors::to_pyerr)? {
        ntng_engine::config::Parsed::Run(c) => {
            Ok(Py::new(py, config::Config::from(*c))?.into_any())
        }
        ntng_engine::config::Parsed::Print(text) => Ok(text.into_pyobject(py)?.into_any().unbind()),
    }
}

/// Makes SIGINT/SIGTERM interrupt blocking engine calls (Python's handlers still run).
#[pyfunction]
fn install_signal_handlers() -> PyResult<()> {
    ntng_engine::interrupt::install_signal_handlers().map_err(Into::into)
}

/// Why the run was interrupted: "interrupt", "terminate", "timeout" or None.
#[pyfunction]
fn interrupt_reason() -> Option<&'static str> {
    use ntng_engine::interrupt::Reason;
    ntng_engine::interrupt::pending().map(|r| match r {
        Reason::Interrupt => "interrupt",
        Reason::Terminate => "terminate",
        Reason::GlobalTimeout => "timeout",
    })
}

/// Clears a SIGINT (SIGTERM and the global timeout end the run: they stay set).
#[pyfunction]
fn clear_interrupt() {
    ntng_engine::interrupt::clear();
}

/// Upstream's `pythonize_name`.
#[pyfunction]
fn pythonize_name(name: &str) -> String {
    ntng_engine::names::pythonize(name)
}

/// The machine name the driver gives a start script; `kind` is a kind's word ("vm",
/// "nspawn", see `machine_kind`).
#[pyfunction]
fn machine_name_from_script(script: &str, kind: &str) -> PyResult<String> {
    let kind = config::parse_kind(kind)?;
    Ok(ntng_engine::names::from_start_script_of(script, kind))
}

/// The driver's tmp dir (upstream's rule: `$XDG_RUNTIME_DIR`, else `$TMPDIR`, ... `/tmp`).
#[pyfunction]
fn tmp_dir() -> PyResult<String> {
    let dir = ntng_engine::driver::tmp_dir().map_err(errors::to_pyerr)?;
    Ok(dir.to_string_lossy().into_owned())
}

/// The name upstream's `NspawnMachine.machine_name_from_start_command` gives a container
/// start script (`run-<name>-nspawn` in its file name), or None when it has none.
#[pyfunction]
fn nspawn_machine_name(script: &str) -> Option<String> {
    ntng_engine::names::container_name(script)
}

/// The arguments the driver appends to a VM's start script for these sockets, in upstream's
/// order (`-nographic` unless `DISPLAY` or `WAYLAND_DISPLAY` is set).
#[pyfunction]
fn qemu_start_args(
    monitor: std::path::PathBuf,
    qmp: std::path::PathBuf,
    shell: std::path::PathBuf,
    allow_reboot: bool,
) -> Vec<String> {
    ntng_engine::qemu::QemuBackend::appended_args_for(
        &monitor,
        &qmp,
        &shell,
        allow_reboot,
        ntng_engine::qemu::display_available(),
    )
}

/// The variables a VM's start script gets on top of the driver's environment.
#[pyfunction]
fn qemu_start_env(
    state_dir: std::path::PathBuf,
    shared_dir: std::path::PathBuf,
) -> Vec<(String, String)> {
    ntng_engine::qemu::start_environment(&state_dir, &shared_dir)
}

/// The QEMU key name for a character (upstream's `CHAR_TO_KEY`), or None.
#[pyfunction]
fn char_to_key(c: &str) -> Option<&'static str> {
    ntng_engine::qemu::char_to_key(c)
}

/// The run that generation C's `--config FILE` alone describes (its machines and VLANs),
/// read by the driver's own parser.
#[pyfunction]
fn read_config_file(path: std::path::PathBuf) -> PyResult<config::Config> {
    let cfg = ntng_engine::config::from_json_file(&path).map_err(errors::to_pyerr)?;
    Ok(config::Config::from(cfg))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parse_args, m)?)?;
    m.add_function(wrap_pyfunction!(install_signal_handlers, m)?)?;
    m.add_function(wrap_pyfunction!(interrupt_reason, m)?)?;
    m.add_function(wrap_pyfunction!(clear_interrupt, m)?)?;
    m.add_function(wrap_pyfunction!(pythonize_name, m)?)?;
    m.add_function(wrap_pyfunction!(machine_name_from_script, m)?)?;
    m.add_function(wrap_pyfunction!(char_to_key, m)?)?;
    m.add_function(wrap_pyfunction!(tmp_dir, m)?)?;
    m.add_function(wrap_pyfunction!(nspawn_machine_name, m)?)?;
    m.add_function(wrap_pyfunction!(qemu_start_args, m)?)?;
    m.add_function(wrap_pyfunction!(qemu_start_env, m)?)?;
    m.add_function(wrap_pyfunction!(config::machine_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(config::machine_kind, m)?)?;
    m.add_class::<config::MachineKind>()?;
    m.add_class::<config::Config>()?;
    m.add_class::<logger::Logger>()?;
    m.add_class::<logger::LogBlock>()?;
    m.add_class::<driver::Driver>()?;
    m.add_class::<driver::VLan>()?;
    m.add_class::<machine::MachineHandle>()?;
    m.add_class::<machine::Machine>()?;
    m.add_class::<process::MachineProcess>()?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(read_config_file, m)?)?;
    m.add_function(wrap_pyfunction!(agent_binary, m)?)?;
    m.add_function(wrap_pyfunction!(boot_cache::boot_cache_entries, m)?)?;
    m.add_function(wrap_pyfunction!(boot_cache::boot_cache_clear, m)?)?;
    m.add("EXIT_OK", ntng_engine::exit_status::OK)?;
    m.add("EXIT_FAILED", ntng_engine::exit_status::FAILED)?;
    m.add("EXIT_USAGE", ntng_engine::exit_status::USAGE)?;
    let timeout = ntng_engine::config::DEFAULT_COMMAND_TIMEOUT.as_secs();
    m.add("DEFAULT_COMMAND_TIMEOUT", timeout)?;
    m.add("SNAPSHOTS_VAR", ntng_engine::qemu::SNAPSHOTS_VAR)?;
    let symbols = pyo3::types::PyTuple::new(m.py(), ntng_engine::names::GENERAL_SYMBOLS)?;
    m.add("GENERAL_SYMBOLS", symbols)?;
    Ok(())
}
