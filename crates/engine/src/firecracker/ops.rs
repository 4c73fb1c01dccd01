//! Firecracker's capabilities: power (a power cut; a reboot through `SendCtrlAltDel`, after
//! which the guest's reset ends Firecracker and the machine gets a new launch), snapshots
//! through the API (pause, `snapshot/create`, resume; a restore is a new Firecracker that
//! loads the snapshot), and links (the TAP's link state in the run's network namespace).

use super::api::{self, SnapshotFiles};
use super::{Boot, FirecrackerBackend, RESET_TIMEOUT};
use crate::backend::shares::Mount;
use crate::backend::{Host, Links, MachineInfo, Power, Rewind, Snapshots};
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

    /// A full snapshot into the state directory (`snapshot-<name>.vmstate`, `.mem`).
    fn save(&self, info: &MachineInfo, name: &str) -> Result<()> {
        let files = SnapshotFiles::in_dir(&info.state_dir, name);
        for f in [&files.state, &files.memory] {
            let _ = std::fs::remove_file(f);
        }
        self.core
            .running(info)?
            .send(&api::snapshot_create(&files))
            .map(drop)
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

impl Links for FirecrackerBackend {
    /// The first VLAN NIC's TAP, down or up, in the run's network namespace.
    fn set_link(&self, info: &MachineInfo, up: bool) -> Result<()> {
        self.core.nics.set_link(info, up)
    }
}
