//! The one mapping from engine errors to Python exceptions.

use pyo3::exceptions::{
    PyAssertionError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::{create_exception, PyErr};

use ntng_engine::Error;

create_exception!(
    nixos_test_ng,
    MachineError,
    PyRuntimeError,
    "A failure that is not the test's fault: the machine or its tooling broke."
);
create_exception!(
    nixos_test_ng,
    TestScriptError,
    PyAssertionError,
    "A failure of the test script; only the script's frames are shown."
);
create_exception!(
    nixos_test_ng,
    RequestedAssertionFailed,
    TestScriptError,
    "A check the script asked for failed (`succeed`, `wait_*`, `t.assert*`)."
);
create_exception!(
    nixos_test_ng,
    ConfigError,
    PyValueError,
    "The command line or configuration is invalid."
);
create_exception!(
    nixos_test_ng,
    QMPAPIError,
    MachineError,
    "QEMU's QMP returned an error."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MachineError", py.get_type::<MachineError>())?;
    m.add("TestScriptError", py.get_type::<TestScriptError>())?;
    m.add(
        "RequestedAssertionFailed",
        py.get_type::<RequestedAssertionFailed>(),
    )?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    let qmp = py.get_type::<QMPAPIError>();
    // Upstream's attributes, set per error by `to_pyerr`; the class holds their defaults.
    qmp.setattr("class_name", "")?;
    qmp.setattr("description", "")?;
    qmp.setattr("transaction_id", py.None())?;
    m.add("QMPAPIError", qmp)?;
    Ok(())
}

/// Converts an engine error into the matching Python exception.
pub fn to_pyerr(e: Error) -> PyErr {
    match e {
        Error::Callback(inner) => match inner.downcast::<PyErr>() {
            Ok(pyerr) => *pyerr,
            Err(other) => MachineError::new_err(other.to_string()),
        },
        Error::Interrupted => {
            ntng_engine::interrupt::clear();
            Python::attach(|py| match py.check_signals() {
                Err(raised) => raised,
                Ok(()) => PyKeyboardInterrupt::new_err("interrupted"),
            })
        }
        e if e.is_requested_assertion() => RequestedAssertionFailed::new_err(e.to_string()),
        e @ Error::Config(_) => ConfigError::new_err(e.to_string()),
        e @ Error::Timeout { .. } => PyTimeoutError::new_err(e.to_string()),
        Error::Qmp { class, desc } => qmp_error(class, desc),
        e @ Error::Io { .. } => PyOSError::new_err(e.to_string()),
        e => MachineError::new_err(e.to_string()),
    }
}

/// A `QMPAPIError` with upstream's `class_name` and `description`; `transaction_id` is None
/// as in upstream, whose requests carry no id (the engine's own ids are internal).
fn qmp_error(class: String, desc: String) -> PyErr {
    let err = QMPAPIError::new_err(format!("{class}: {desc}"));
    Python::attach(|py| {
        let value = err.value(py);
        let _ = value.setattr("class_name", class);
        let _ = value.setattr("description", desc);
    });
    err
}

/// Wraps a Python error for the engine (from a callback run inside an engine call).
pub fn from_pyerr(e: PyErr) -> Error {
    Error::Callback(Box::new(e))
}
