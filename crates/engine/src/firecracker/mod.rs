//! The Firecracker backend: a microVM configured through Firecracker's REST API on its unix
//! socket (`api.rs`), its serial console on Firecracker's stdout, the guest agent over
//! Firecracker's hybrid vsock socket as the shell (there is no virtio console, so no
//! backdoor), and its capabilities (`ops.rs`: power, snapshots, links).
//!
//! The start script `run-<name>-firecracker` prints the machine's configuration as one JSON
//! object (`vmm/spec.rs`); the launch runs it, starts `firecracker --api-sock
//! <state>/firecracker.sock --id <name>` (inside the run's network namespace when the machine
//! has VLAN NICs, `vmm/tap.rs`), waits for the socket, configures the microVM and starts it.

mod api;
mod ops;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{
    Backend, Host, LaunchOptions, Launched, Links, MachineInfo, MachineKind, Power, PowerOff,
    Snapshots,
};
use crate::error::{Error, Result};
use crate::vmm::launch::{self, Binary, Running, VmmCommand, SOCKET_TIMEOUT};
use crate::vmm::nics::VlanNics;
use crate::vmm::{Vmm, VmmSpec};

pub use api::SnapshotFiles;

/// The API socket in the state directory.
pub const API_SOCKET: &str = "firecracker.sock";
/// How long a guest may take to reset after Ctrl-Alt-Delete (which ends Firecracker).
const RESET_TIMEOUT: Duration = Duration::from_secs(120);

/// How a launch brings up the microVM.
enum Boot<'a> {
    /// Configure it from the start script's configuration and start it.
    Fresh(&'a VmmSpec),
    /// Load it from a snapshot, resumed.
    Snapshot(&'a SnapshotFiles),
}

/// A Firecracker microVM.
pub struct FirecrackerBackend {
    start_command: String,
    binary: Binary,
    socket_timeout: Duration,
    running: Mutex<Option<Arc<Running>>>,
    nics: VlanNics,
}

impl FirecrackerBackend {
    /// A microVM configured by the start script `start_command`.
    pub fn new(start_command: impl Into<String>) -> Self {
        FirecrackerBackend {
            start_command: launch::absolute_start_command(start_command),
            binary: Binary::Lookup,
            socket_timeout: SOCKET_TIMEOUT,
            running: Mutex::new(None),
            nics: VlanNics::default(),
        }
    }

    /// Runs `binary` instead of the one `NIXOS_TEST_NG_FIRECRACKER` or PATH names, and waits
    /// `socket_timeout` for its API socket (tests).
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

    /// The running Firecracker, or an error naming the machine.
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

    /// Runs the start script and parses what it printed.
    fn run_script(&self, info: &MachineInfo) -> Result<VmmSpec> {
        launch::run_script(&self.start_command, info)
    }

    /// Starts a Firecracker process and brings up the microVM as `boot` says.
    fn start_vmm(&self, host: &dyn Host, boot: Boot<'_>) -> Result<Launched> {
        let info = host.info();
        let binary = self.binary.resolve(Vmm::Firecracker)?;
        let nics = match boot {
            Boot::Fresh(spec) => self.nics.ensure(info, &spec.vlans)?,
            Boot::Snapshot(_) => Vec::new(),
        };
        let socket = info.state_dir.join(API_SOCKET);
        let vsock = info.state_dir.join(launch::VSOCK_SOCKET);
        let configure = |api: &crate::vmm::api::Api| match boot {
            Boot::Fresh(spec) => api.send_all(&api::boot_calls(spec, &vsock, &nics)),
            Boot::Snapshot(files) => api.send(&api::snapshot_load(files)).map(drop),
        };
        let (launched, running) = launch::start(
            host,
            VmmCommand {
                vmm: Vmm::Firecracker,
                binary,
                args: vec![
                    "--api-sock".into(),
                    socket.clone().into(),
                    "--id".into(),
                    vm_id(&info.name).into(),
                ],
                socket,
                socket_timeout: self.socket_timeout,
                netns: self.nics.netns(),
                fault: api::fault_message,
                configure: &configure,
            },
        )?;
        *self.running.lock().unwrap() = Some(running);
        Ok(launched)
    }
}

/// Firecracker's `--id`: letters, digits and `-`, at most 64.
fn vm_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    if id.is_empty() {
        "machine".to_string()
    } else {
        id
    }
}

impl Backend for FirecrackerBackend {
    fn kind(&self) -> MachineKind {
        MachineKind::Firecracker
    }

    fn start_command(&self) -> &str {
        &self.start_command
    }

    fn launch(&self, host: &dyn Host, _options: LaunchOptions) -> Result<Launched> {
        let info = host.info();
        info.log("starting vm");
        drop(self.running.lock().unwrap().take());
        let spec = self.run_script(info)?;
        let launched = self.start_vmm(host, Boot::Fresh(&spec))?;
        if info.vnc {
            info.log("no display over VNC: a Firecracker microVM has no screen");
        }
        Ok(launched)
    }

    /// The agent runs `poweroff`; before it is connected, SIGTERM ends Firecracker.
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
