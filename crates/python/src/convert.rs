//! Argument conversions shared by the bindings.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A duration from None, a number of seconds or a `datetime.timedelta`.
pub fn duration(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(v) = value else { return Ok(None) };
    if v.is_none() {
        return Ok(None);
    }
    let secs: f64 = if v.hasattr("total_seconds")? {
        v.call_method0("total_seconds")?.extract()?
    } else {
        v.extract()?
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(PyValueError::new_err(format!(
            "invalid timeout: {secs} seconds"
        )));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}
