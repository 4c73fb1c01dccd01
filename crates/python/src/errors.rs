//! The one mapping from engine errors to Python exceptions.

use pyo3::exceptions::{
    PyAssertionError, PyException, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyTimeoutError,
    PyValueError,
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
    GlobalTimeout,
    PyException,
    "The driver's global timeout expired: the run ends (the driver dies of SIGTERM)."
);
create_exception!(
    nixos_test_ng,
    Terminated,
    PyException,
    "The driver received SIGTERM: the run ends (the driver dies of SIGTERM)."
);
create_exception!(
    nixos_test_ng,
    QMPAPIError,
    MachineError,
    "QEMU's QMP returned an error."
);

create_exception!(
    nixos_test_ng,
    SnapshotRefused,
    MachineError,
    "The machine cannot be snapshotted as it is configured; `reason` says why, `fix` what \
     makes it possible (may be empty)."
);

create_exception!(
    nixos_test_ng,
    Unsupported,
    MachineError,
    "The machine's backend cannot do this (a container has no display, no QEMU monitor, ...); \
     `operation` names what was asked, `backend` the backend that lacks it."
);

create_exception!(
    nixos_test_ng,
    NetworkConditionError,
    PyValueError,
    "A network condition or partition given with an invalid value (nothing was sent to the \
     guest); `field` names the argument, `value` the value as given."
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
    m.add("GlobalTimeout", py.get_type::<GlobalTimeout>())?;
    m.add("Terminated", py.get_type::<Terminated>())?;
    let refused = py.get_type::<SnapshotRefused>();
    // set on each instance by `to_pyerr`; the class holds them too, for introspection
    refused.setattr("reason", "")?;
    refused.setattr("fix", "")?;
    m.add("SnapshotRefused", refused)?;
    let unsupported = py.get_type::<Unsupported>();
    unsupported.setattr("operation", "")?;
    unsupported.setattr("backend", "")?;
    m.add("Unsupported", unsupported)?;
    let netem = py.get_type::<NetworkConditionError>();
    netem.setattr("field", "")?;
    netem.setattr("value", "")?;
    m.add("NetworkConditionError", netem)?;
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
            use ntng_engine::interrupt::{self, Reason};
            interrupt::clear();
            Python::attach(|py| {
                // A pending signal's Python handler raises the first exception of it.
                let handled = py.check_signals();
                if interrupt::ending() {
                    interrupt::report_ending();
                }
                match handled {
                    Err(raised) => raised,
                    Ok(()) => match interrupt::pending() {
                        Some(Reason::GlobalTimeout) => {
                            GlobalTimeout::new_err("the global timeout expired")
                        }
                        Some(Reason::Terminate) => Terminated::new_err("received SIGTERM"),
                        _ => PyKeyboardInterrupt::new_err("interrupted"),
                    },
                }
            })
        }
        e if e.is_requested_assertion() => RequestedAssertionFailed::new_err(e.to_string()),
        e @ Error::Config(_) => ConfigError::new_err(e.to_string()),
        e @ Error::Timeout { .. } => PyTimeoutError::new_err(e.to_string()),
        Error::Qmp { class, desc } => qmp_error(class, desc),
        e @ Error::SnapshotRefused { .. } => {
            let message = e.to_string();
            let Error::SnapshotRefused { reason, fix, .. } = e else {
                unreachable!()
            };
            Python::attach(|py| {
                let err = SnapshotRefused::new_err(message);
                let value = err.value(py);
                match value
                    .setattr("reason", reason)
                    .and_then(|()| value.setattr("fix", fix))
                {
                    Ok(()) => err,
                    Err(failed) => failed,
                }
            })
        }
        e @ Error::Unsupported { .. } => {
            let message = e.to_string();
            let Error::Unsupported {
                operation, backend, ..
            } = e
            else {
                unreachable!()
            };
            Python::attach(|py| {
                let err = Unsupported::new_err(message);
                let value = err.value(py);
                match value
                    .setattr("operation", operation)
                    .and_then(|()| value.setattr("backend", backend))
                {
                    Ok(()) => err,
                    Err(failed) => failed,
                }
            })
        }
        Error::NetworkCondition(e) => Python::attach(|py| {
            let err = NetworkConditionError::new_err(e.to_string());
            let value = err.value(py);
            match value
                .setattr("field", e.field)
                .and_then(|()| value.setattr("value", e.value))
            {
                Ok(()) => err,
                Err(failed) => failed,
            }
        }),
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
