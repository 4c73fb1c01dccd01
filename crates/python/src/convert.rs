//! Argument conversions shared by the bindings.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

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

/// Above this size a command's output becomes a Python `str` in pieces of this size.
const OUTPUT_PIECE: usize = 8 << 20;

/// A command's output as a Python `str`, never holding two full copies of a large one: the
/// `str` is made from the text's tail piece by piece, the `String` shrunk after each (a large
/// allocation gives its pages back), then the pieces are appended to the head's `str`, which
/// CPython grows in place since nothing else holds it, each piece dropped once appended. So
/// the output costs about its size once, plus a piece, instead of twice (the stable ABI has
/// no way to write into a `str` directly).
pub fn output_str(py: Python<'_>, mut text: String) -> PyResult<Bound<'_, PyString>> {
    if text.len() <= 2 * OUTPUT_PIECE {
        return Ok(PyString::new(py, &text));
    }
    let mut pieces = Vec::new();
    while !text.is_empty() {
        let mut at = text.len().saturating_sub(OUTPUT_PIECE);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        pieces.push(PyString::new(py, &text[at..]));
        text.truncate(at);
        text.shrink_to_fit();
    }
    let head = pieces.pop().expect("a non-empty text has a piece");
    let mut joined = head.into_ptr();
    while let Some(piece) = pieces.pop() {
        // SAFETY: `joined` is an owned reference to a str (replaced by the result, or NULL
        // with an exception set); `piece` a live str, borrowed.
        unsafe { ffi::PyUnicode_Append(&mut joined, piece.as_ptr()) };
        drop(piece);
        if joined.is_null() {
            return Err(PyErr::fetch(py));
        }
    }
    // SAFETY: an owned reference to the str PyUnicode_Append returned.
    Ok(unsafe { Bound::from_owned_ptr(py, joined).cast_into_unchecked() })
}

/// `(status, output)` with the output as [`output_str`] makes it.
pub fn status_and_output(
    py: Python<'_>,
    (status, text): (i32, String),
) -> PyResult<(i32, Bound<'_, PyString>)> {
    Ok((status, output_str(py, text)?))
}
