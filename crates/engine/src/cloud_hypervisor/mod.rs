//! The Cloud Hypervisor backend: a VM created and booted through Cloud Hypervisor's REST API
//! on its unix socket (`api.rs`), its serial port on the process's stdout as the machine's
//! console, the guest agent over Cloud Hypervisor's hybrid vsock socket as the shell (no
//! backdoor), and its capabilities (`ops.rs`: power, snapshots, links).
//!
//! The start script `run-<name>-cloud-hypervisor` prints the machine's configuration as one
//! JSON object (`vmm/spec.rs`, the same contract as Firecracker's), or `--config` gives it
//! inline; the launch runs the script, starts
//! `cloud-hypervisor --api-socket path=<state>/cloud-hypervisor.sock` (inside the run's
//! network namespace when the machine has VLAN NICs, `vmm/nics.rs`), waits for the socket,
//! then `vm.create` and `vm.boot` (`vmm/core.rs` and `vmm/launch.rs` do what both VMMs
//! share).

mod api;
mod ops;

use std::path::Path;

use crate::backend::{
    Backend, Host, LaunchOptions, Launched, Links, MachineKind, Power, PowerOff, Snapshots,
};
use crate::error::Result;
use crate::vmm::core::{Source, VmmBackend, VmmCore};
use crate::vmm::launch;
use crate::vmm::Vmm;

/// The API socket in the state directory.
pub const API_SOCKET: &str = "cloud-hypervisor.sock";

/// How a launch brings up the VM.
enum Boot<'a> {
    /// Create it from the start script's configuration and boot it.
    Fresh,
    /// Restore it from the snapshot in this directory, resumed.
    Snapshot(&'a Path),
}

/// A Cloud Hypervisor VM.
pub struct CloudHypervisorBackend {
    core: VmmCore,
}

impl CloudHypervisorBackend {
    /// A VM configured by the start script `start_command`.
    pub fn new(start_command: impl Into<String>) -> Self {
        Self::from_source(Source::Script(start_command.into()))
    }

    /// A VM configured by `source`.
    pub fn from_source(source: Source) -> Self {
        CloudHypervisorBackend {
            core: VmmCore::new(Vmm::CloudHypervisor, source),
        }
    }

    /// Starts a Cloud Hypervisor process and brings up the VM as `boot` says.
    fn start_vmm(&self, host: &dyn Host, boot: Boot<'_>) -> Result<Launched> {
        let info = host.info();
        let calls = match boot {
            Boot::Fresh => {
                let spec = self.core.spec(info)?;
                let nics = self.core.nics.ensure(info, &spec.vlans)?;
                let vsock = info.state_dir.join(launch::VSOCK_SOCKET);
                api::boot_calls(&spec, &vsock, &nics)
            }
            Boot::Snapshot(dir) => api::restore_calls(dir),
        };
        let socket = info.state_dir.join(API_SOCKET);
        let mut path_arg = std::ffi::OsString::from("path=");
        path_arg.push(&socket);
        let args = vec!["--api-socket".into(), path_arg];
        self.core
            .start(host, args, socket, api::fault_message, &|api| {
                api.send_all(&calls)
            })
    }
}

impl VmmBackend for CloudHypervisorBackend {
    fn core_mut(&mut self) -> &mut VmmCore {
        &mut self.core
    }
}

impl Backend for CloudHypervisorBackend {
    fn kind(&self) -> MachineKind {
        MachineKind::CloudHypervisor
    }

    fn start_command(&self) -> &str {
        self.core.start_command()
    }

    fn launch(&self, host: &dyn Host, _options: LaunchOptions) -> Result<Launched> {
        let info = host.info();
        info.log("starting vm");
        drop(self.core.take_running());
        let launched = self.start_vmm(host, Boot::Fresh)?;
        if info.vnc {
            info.log("no display over VNC: a Cloud Hypervisor VM here has no screen");
        }
        Ok(launched)
    }

    /// The agent runs `poweroff`; before it is connected, `vm.shutdown` and `vmm.shutdown`
    /// (`Power::power_off_vmm`) end Cloud Hypervisor.
    fn power_off(&self) -> PowerOff {
        PowerOff::Command("poweroff", libc::SIGTERM)
    }

    /// Forgets the process; a released machine's TAPs go too.
    fn stopped(&self, released: bool) {
        self.core.stopped(released);
    }

    /// No display device: the guest's X display, captured through the agent.
    fn captures_guest_display(&self) -> bool {
        true
    }

    fn snapshots(&self) -> Option<&dyn Snapshots> {
        Some(self)
    }

    fn links(&self) -> Option<&dyn Links> {
        Some(self)
    }

    fn power(&self) -> Option<&dyn Power> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
