//! The boot cache's directory for `nixos-test-ng cache list|clear` (the layout is the
//! engine's).

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use ntng_engine::qemu::boot_cache;

/// The cache directory the environment names (NIXOS_TEST_NG_BOOT_CACHE, else the default),
/// its size limit, and its entries, most recently used first: dicts with `key`, `machine`,
/// `size` (bytes), `saved` and `last_used` (seconds since the epoch), `inputs` (lines).
#[pyfunction]
pub fn boot_cache_entries(
    py: Python<'_>,
    env: HashMap<String, String>,
) -> PyResult<(String, u64, Vec<Py<PyDict>>)> {
    let store = boot_cache::store_from_env(&env).map_err(crate::errors::to_pyerr)?;
    let entries = py.detach(|| store.entries());
    let mut out = Vec::new();
    for e in entries {
        let d = PyDict::new(py);
        d.set_item("key", &e.manifest.key)?;
        d.set_item("machine", &e.manifest.machine)?;
        d.set_item("size", e.size())?;
        d.set_item("saved", e.manifest.saved)?;
        d.set_item("last_used", e.last_used_secs())?;
        d.set_item("inputs", &e.manifest.inputs)?;
        out.push(d.unbind());
    }
    Ok((store.dir.display().to_string(), store.limit, out))
}

/// Deletes every entry of the cache the environment names; returns its directory and the
/// number of entries deleted.
#[pyfunction]
pub fn boot_cache_clear(py: Python<'_>, env: HashMap<String, String>) -> PyResult<(String, usize)> {
    let store = boot_cache::store_from_env(&env).map_err(crate::errors::to_pyerr)?;
    let n = py.detach(|| store.clear()).map_err(|e| {
        crate::errors::to_pyerr(ntng_engine::error::Error::io(
            format!("clearing {}", store.dir.display()),
            e,
        ))
    })?;
    Ok((store.dir.display().to_string(), n))
}
