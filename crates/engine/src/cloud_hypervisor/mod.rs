//! The Cloud Hypervisor backend: a VM created and booted through Cloud Hypervisor's REST API
//! on its unix socket (`api.rs`), its serial port on the process's stdout as the machine's
//! console, the guest agent over Cloud Hypervisor's hybrid vsock socket as the shell (no
//! backdoor), and its capabilities (`ops.rs`: power, snapshots, links).
//!
//! The start script `run-<name>-cloud-hypervisor` prints the machine's configuration as one
//! JSON object (`vmm/spec.rs`, the same contract as Firecracker's); the launch runs it, starts
//! `cloud-hypervisor --api-socket path=<state>/cloud-hypervisor.sock` (inside the run's
//! network namespace when the machine has VLAN NICs, `vmm/nics.rs`), waits for the socket,
//! then `vm.create` and `vm.boot` (`vmm/launch.rs` does what both VMMs share).

mod api;
mod ops;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{
    Backend, Host, LaunchOptions, Launched, Links, MachineInfo, MachineKind, Power, PowerOff,
    Snapshots,
};
use crate::error::{Error, Result};
use crate::vmm::launch::{self, Binary, Running, VmmCommand, SOCKET_TIMEOUT};
use crate::vmm::nics::VlanNics;
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
    start_command: String,
    binary: Binary,
    socket_timeout: Duration,
    running: Mutex<Option<Arc<Running>>>,
    nics: VlanNics,
}

impl CloudHypervisorBackend {
    /// A VM configured by the start script `start_command`.
    pub fn new(start_command: impl Into<String>) -> Self {
        CloudHypervisorBackend {
            start_command: launch::absolute_start_command(start_command),
            binary: Binary::Lookup,
            socket_timeout: SOCKET_TIMEOUT,
            running: Mutex::new(None),
            nics: VlanNics::default(),
        }
    }

    /// Runs `binary` instead of the one `NIXOS_TEST_NG_CLOUD_HYPERVISOR` or PATH names, and
    /// waits `socket_timeout` for its API socket (tests).
    #[cfg(test)]
    pub(crate) fn with_binary(
        mut self,
        binary: std::path::PathBuf,
        socket_timeout: Duration,
    ) -> Self {
        self.binary = Binary::Fixed(binary);
        self.socket_timeout = socket_timeout;
        self
    }

    /// Looks for the binary on `path` only (tests).
    #[cfg(test)]
    pub(crate) fn with_search_path(mut self, path: &str) -> Self {
        self.binary = Binary::Search(path.to_string());
        self
    }

    /// The running Cloud Hypervisor, or an error naming the machine.
    pub(crate) fn running(&self, info: &MachineInfo) -> Result<Arc<Running>> {
        self.running
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::InvalidState {
                machine: info.name.clone(),
                message: "the machine is not running (call start() first)".to_string(),
            })
    }

    /// Starts a Cloud Hypervisor process and brings up the VM as `boot` says.
    fn start_vmm(&self, host: &dyn Host, boot: Boot<'_>) -> Result<Launched> {
        let info = host.info();
        let calls = match boot {
            Boot::Fresh => {
                let spec = launch::run_script(&self.start_command, info)?;
                let nics = self.nics.ensure(info, &spec.vlans)?;
                let vsock = info.state_dir.join(launch::VSOCK_SOCKET);
                api::boot_calls(&spec, &vsock, &nics)
            }
            Boot::Snapshot(dir) => api::restore_calls(dir),
        };
        let binary = self.binary.resolve(Vmm::CloudHypervisor)?;
        let socket = info.state_dir.join(API_SOCKET);
        let mut path_arg = std::ffi::OsString::from("path=");
        path_arg.push(&socket);
        let (launched, running) = launch::start(
            host,
            VmmCommand {
                vmm: Vmm::CloudHypervisor,
                binary,
                args: vec!["--api-socket".into(), path_arg],
                socket,
                socket_timeout: self.socket_timeout,
                netns: self.nics.netns(),
                fault: api::fault_message,
                configure: &|api| api.send_all(&calls),
            },
        )?;
        *self.running.lock().unwrap() = Some(running);
        Ok(launched)
    }
}

impl Backend for CloudHypervisorBackend {
    fn kind(&self) -> MachineKind {
        MachineKind::CloudHypervisor
    }

    fn start_command(&self) -> &str {
        &self.start_command
    }

    fn launch(&self, host: &dyn Host, _options: LaunchOptions) -> Result<Launched> {
        let info = host.info();
        info.log("starting vm");
        drop(self.running.lock().unwrap().take());
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
        self.running.lock().unwrap().take();
        if released {
            self.nics.release();
        }
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
