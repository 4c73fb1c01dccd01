//! Cloud Hypervisor's capabilities: power (a power cut; a reboot through `vm.reboot`, after
//! which the guest goes on in the same process), snapshots through the API (`vm.pause`,
//! `vm.snapshot` into a directory, `vm.resume`; a restore is a new process that restores the
//! directory and resumes), and links (the TAP's link state in the run's network namespace).

use super::api;
use super::{Boot, CloudHypervisorBackend};
use crate::backend::shares::Mount;
use crate::backend::{Host, Links, MachineInfo, Power, Rewind, Snapshots};
use crate::error::{Error, Result};

impl Power for CloudHypervisorBackend {
    /// Kills Cloud Hypervisor: the guest stops as at a power cut.
    fn crash(&self, info: &MachineInfo) -> Result<()> {
        self.core.crash(info)
    }

    fn has_reboot(&self) -> bool {
        true
    }

    /// `vm.reboot`: Cloud Hypervisor resets the guest in the same process.
    fn reboot(&self, host: &dyn Host) -> Result<()> {
        self.core
            .running(host.info())?
            .send(&api::put("vm.reboot"))
            .map(drop)
    }

    /// `vm.shutdown`, then `vmm.shutdown`, which ends the process.
    fn power_off_vmm(&self, info: &MachineInfo) -> Result<bool> {
        let running = self.core.running(info)?;
        running.send(&api::put("vm.shutdown"))?;
        running.send(&api::put("vmm.shutdown"))?;
        Ok(true)
    }
}

impl Snapshots for CloudHypervisorBackend {
    /// This VM has no 9p or virtiofs shares.
    fn unmounts_shares(&self) -> bool {
        false
    }

    fn pause(&self, info: &MachineInfo) -> Result<()> {
        self.core.pause(info, &api::put("vm.pause"))
    }

    /// Resumes a paused VM (a restored one runs already).
    fn resume(&self, info: &MachineInfo) -> Result<()> {
        self.core.resume(info, &api::put("vm.resume"))
    }

    /// A snapshot into the directory `snapshot-<name>` of the state directory (made anew).
    fn save(&self, info: &MachineInfo, name: &str) -> Result<()> {
        let dir = api::snapshot_dir(&info.state_dir, name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::InvalidState {
            machine: info.name.clone(),
            message: format!("cannot make the snapshot directory {}: {e}", dir.display()),
        })?;
        self.core
            .running(info)?
            .send(&api::snapshot(&dir))
            .map(drop)
    }

    /// Ends the running Cloud Hypervisor and has the machine adopt a new one that restored the
    /// snapshot (resumed). Its agent connection is new: the machine resyncs the session.
    fn rewind(&self, host: &dyn Host, name: &str, _mounts: &[Mount]) -> Result<Rewind> {
        let info = host.info();
        let dir = api::snapshot_dir(&info.state_dir, name);
        if !dir.is_dir() {
            return Err(Error::InvalidState {
                machine: info.name.clone(),
                message: format!(
                    "cannot restore snapshot {name:?}: its directory {} is gone",
                    dir.display()
                ),
            });
        }
        self.core.kill_running();
        let launched = self.start_vmm(host, Boot::Snapshot(&dir))?;
        host.adopt(launched);
        Ok(Rewind::InPlace)
    }
}

impl Links for CloudHypervisorBackend {
    /// The first VLAN NIC's TAP, down or up, in the run's network namespace.
    fn set_link(&self, info: &MachineInfo, up: bool) -> Result<()> {
        self.core.nics.set_link(info, up)
    }
}
