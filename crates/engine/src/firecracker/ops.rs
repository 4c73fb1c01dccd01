//! Firecracker's capabilities: power (a power cut; a reboot through `SendCtrlAltDel`, after
//! which the guest's reset ends Firecracker and the machine gets a new launch), snapshots
//! through the API (pause, `snapshot/create`, resume; a restore is a new Firecracker that
//! loads the snapshot), links (the TAP's link state in the run's network namespace), and
//! metrics (`FlushMetrics`, then the metrics file's last line).
//!
//! A launch's first snapshot is full; the later ones are diffs (only the pages dirtied since
//! the previous snapshot), from which the backend builds each snapshot's complete memory
//! file (`rebase.rs`), so that a restore always loads one complete file.

use std::path::Path;

use serde_json::Value;

use super::api::{self, SnapshotFiles, SnapshotType};
use super::{rebase, Boot, FirecrackerBackend, METRICS_FILE, RESET_TIMEOUT};
use crate::backend::shares::Mount;
use crate::backend::{Host, Links, MachineInfo, Power, Rewind, Snapshots, VmmMetrics};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;

impl Power for FirecrackerBackend {
    /// Kills Firecracker: the guest stops as at a power cut.
    fn crash(&self, info: &MachineInfo) -> Result<()> {
        self.core.crash(info)
    }

    fn has_reboot(&self) -> bool {
        true
    }

    /// `SendCtrlAltDel`; the guest's reset ends Firecracker (it cannot reset a microVM), so
    /// the machine then adopts a new launch from the start script.
    fn reboot(&self, host: &dyn Host) -> Result<()> {
        let info = host.info();
        let running = self.core.running(info)?;
        running.send(&api::action("SendCtrlAltDel"))?;
        match running
            .process
            .wait_until(Deadline::after(Some(RESET_TIMEOUT)))?
        {
            Some(_) => {}
            None => {
                return Err(host.guest_error(format!(
                    "the guest did not reset within {} s of Ctrl-Alt-Delete (Firecracker ends \
                     with the guest's reset: does its kernel command line have `reboot=k`?)",
                    RESET_TIMEOUT.as_secs()
                )))
            }
        }
        info.log("the guest reset, which ends Firecracker: starting it again");
        let spec = self.core.spec(info)?;
        let launched = self.start_vmm(host, Boot::Fresh(&spec))?;
        host.adopt(launched);
        Ok(())
    }
}

impl Snapshots for FirecrackerBackend {
    /// A microVM has no 9p or virtiofs shares.
    fn unmounts_shares(&self) -> bool {
        false
    }

    fn pause(&self, info: &MachineInfo) -> Result<()> {
        self.core.pause(info, &api::vm_state(true))
    }

    /// Resumes a paused microVM (a loaded snapshot runs already).
    fn resume(&self, info: &MachineInfo) -> Result<()> {
        self.core.resume(info, &api::vm_state(false))
    }

    /// A snapshot into the state directory (`snapshot-<name>.vmstate`, `.mem`): full, or a
    /// diff laid over the previous snapshot's memory file when this launch took one.
    fn save(&self, info: &MachineInfo, name: &str) -> Result<()> {
        let files = SnapshotFiles::in_dir(&info.state_dir, name);
        let mut chain = self.chain.lock().unwrap();
        // Until this snapshot is complete, the next one cannot be a diff against anything.
        let base = chain.base.take().filter(|b| b.is_file());
        let running = self.core.running(info)?;
        let _ = std::fs::remove_file(&files.state);
        if let (Some(base), false) = (&base, chain.diff_refused) {
            let diff = files.diff_memory();
            let _ = std::fs::remove_file(&diff);
            match running.send(&api::snapshot_create(
                &files.state,
                &diff,
                SnapshotType::Diff,
            )) {
                Ok(_) => {
                    let merged = merge(info, base, &diff, &files.memory);
                    let _ = std::fs::remove_file(&diff);
                    if merged.is_err() {
                        // no state file beside an older memory file of the same name
                        for f in [&files.state, &files.memory] {
                            let _ = std::fs::remove_file(f);
                        }
                    }
                    merged?;
                    chain.base = Some(files.memory);
                    return Ok(());
                }
                Err(e) if !running.process.is_running() => return Err(e),
                Err(e) => {
                    let _ = std::fs::remove_file(&diff);
                    info.log(&format!(
                        "Firecracker refused a diff snapshot ({e}): this launch takes full \
                         snapshots"
                    ));
                    chain.diff_refused = true;
                }
            }
        }
        let _ = std::fs::remove_file(&files.memory);
        running.send(&api::snapshot_create(
            &files.state,
            &files.memory,
            SnapshotType::Full,
        ))?;
        chain.base = Some(files.memory);
        Ok(())
    }

    /// Ends the running Firecracker and has the machine adopt a new one that loaded the
    /// snapshot (resumed). Its agent connection is new: the machine resyncs the session.
    fn rewind(&self, host: &dyn Host, name: &str, _mounts: &[Mount]) -> Result<Rewind> {
        let info = host.info();
        let files = SnapshotFiles::in_dir(&info.state_dir, name);
        if let Some(missing) = [&files.state, &files.memory]
            .into_iter()
            .find(|f| !f.is_file())
        {
            return Err(Error::InvalidState {
                machine: info.name.clone(),
                message: format!(
                    "cannot restore snapshot {name:?}: its file {} is gone",
                    missing.display()
                ),
            });
        }
        self.core.kill_running();
        let launched = self.start_vmm(host, Boot::Snapshot(&files))?;
        host.adopt(launched);
        Ok(Rewind::InPlace)
    }
}

/// Writes `memory`, the complete memory file: `base` with the diff's data over it. The
/// partial file is renamed into place only when complete (`base` may be `memory` itself).
fn merge(info: &MachineInfo, base: &Path, diff: &Path, memory: &Path) -> Result<()> {
    let mut partial = memory.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let failed = |message: String| Error::InvalidState {
        machine: info.name.clone(),
        message: format!(
            "cannot build the complete memory file {} of a diff snapshot: {message}",
            memory.display()
        ),
    };
    if let Err(e) = rebase::rebase(base, diff, &partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(e.to_string()));
    }
    std::fs::rename(&partial, memory).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        failed(format!(
            "cannot rename {} into place: {e}",
            partial.display()
        ))
    })
}

impl Links for FirecrackerBackend {
    /// The first VLAN NIC's TAP, down or up, in the run's network namespace.
    fn set_link(&self, info: &MachineInfo, up: bool) -> Result<()> {
        self.core.nics.set_link(info, up)
    }
}

impl VmmMetrics for FirecrackerBackend {
    /// `FlushMetrics`, then the last line of the metrics file, one JSON object.
    fn vmm_metrics(&self, info: &MachineInfo) -> Result<Value> {
        self.core
            .running(info)?
            .send(&api::action("FlushMetrics"))?;
        let path = info.state_dir.join(METRICS_FILE);
        let bad = |message: String| Error::InvalidState {
            machine: info.name.clone(),
            message: format!(
                "cannot read Firecracker's metrics {}: {message}",
                path.display()
            ),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        last_metrics(&text).map_err(bad)
    }
}

/// The last line of a metrics file as a JSON object.
fn last_metrics(text: &str) -> std::result::Result<Value, String> {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or("it is empty after FlushMetrics")?;
    match serde_json::from_str::<Value>(line) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(format!("its last line is not a JSON object: {line:?}")),
        Err(e) => Err(format!("its last line is not JSON ({e}): {line:?}")),
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::last_metrics;
    use serde_json::json;

    #[test]
    fn the_last_line_is_the_metrics() {
        assert_eq!(
            last_metrics("{\"a\": 1}\n{\"a\": 2, \"b\": {}}\n\n").unwrap(),
            json!({"a": 2, "b": {}})
        );
    }

    #[test]
    fn a_bad_or_missing_line_is_named() {
        assert_eq!(
            last_metrics("").unwrap_err(),
            "it is empty after FlushMetrics"
        );
        assert_eq!(
            last_metrics("{\"a\": 1}\n[1]\n").unwrap_err(),
            "its last line is not a JSON object: \"[1]\""
        );
        let e = last_metrics("{\"a\": 1}\n{\"a\": \n").unwrap_err();
        assert!(e.starts_with("its last line is not JSON ("), "{e}");
        assert!(e.ends_with("): \"{\\\"a\\\": \""), "{e}");
    }
}
