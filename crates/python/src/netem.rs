//! Conversions for network conditions and partitions: Python values to the engine's
//! (checked there, once).

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use ntng_engine::machine::Machine as EngineMachine;
use ntng_engine::netem::{ConditionsInput, Value};

use crate::machine::Machine;

/// A condition's value: None, a number, a string, or (delay, jitter) a `timedelta`.
fn value(field: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Value>> {
    let Some(v) = v else { return Ok(None) };
    if v.is_none() {
        return Ok(None);
    }
    if v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{field}: expected a number or a string, not a bool"
        )));
    }
    if v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>() {
        return Ok(Some(Value::Number(v.extract()?)));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(Some(Value::Text(v.extract()?)));
    }
    if matches!(field, "delay" | "jitter") && v.hasattr("total_seconds")? {
        return Ok(Some(Value::Number(
            v.call_method0("total_seconds")?.extract()?,
        )));
    }
    Err(PyTypeError::new_err(format!(
        "{field}: expected a number or a string, not {}",
        v.get_type().name()?
    )))
}

/// The conditions as given to `set_network_conditions`.
#[allow(clippy::too_many_arguments)]
pub fn conditions(
    delay: Option<&Bound<'_, PyAny>>,
    jitter: Option<&Bound<'_, PyAny>>,
    loss: Option<&Bound<'_, PyAny>>,
    duplicate: Option<&Bound<'_, PyAny>>,
    reorder: Option<&Bound<'_, PyAny>>,
    corrupt: Option<&Bound<'_, PyAny>>,
    rate: Option<&Bound<'_, PyAny>>,
) -> PyResult<ConditionsInput> {
    Ok(ConditionsInput {
        delay: value("delay", delay)?,
        jitter: value("jitter", jitter)?,
        loss: value("loss", loss)?,
        duplicate: value("duplicate", duplicate)?,
        reorder: value("reorder", reorder)?,
        corrupt: value("corrupt", corrupt)?,
        rate: value("rate", rate)?,
    })
}

/// A partition's groups: an iterable of iterables of machines.
pub fn groups(groups: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<Arc<EngineMachine>>>> {
    let mut out = Vec::new();
    for group in groups.try_iter()? {
        let group = group?;
        if group.is_instance_of::<Machine>() {
            return Err(PyTypeError::new_err(
                "groups: expected a list of groups of machines, e.g. [[a, b], [c]]",
            ));
        }
        let mut machines = Vec::new();
        for m in group.try_iter()? {
            let m = m?;
            let machine = m.cast::<Machine>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "groups: expected machines, not {}",
                    m.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            machines.push(machine.get().engine());
        }
        out.push(machines);
    }
    Ok(out)
}
