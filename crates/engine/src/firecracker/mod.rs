//! The Firecracker backend: a microVM configured through Firecracker's REST API on its unix
//! socket (`api.rs`), its serial console on Firecracker's stdout, the guest agent over
//! Firecracker's hybrid vsock socket as the shell (there is no virtio console, so no
//! backdoor), and its capabilities (`ops.rs`: power, snapshots full and diff, links,
//! metrics; `rebase.rs` builds a diff snapshot's complete memory file).
//!
//! The start script `run-<name>-firecracker` prints the machine's configuration as one JSON
//! object (`vmm/spec.rs`), or `--config` gives it inline; the launch runs the script, starts `firecracker --api-sock
//! <state>/firecracker.sock --id <name>` (inside the run's network namespace when the machine
//! has VLAN NICs, `vmm/tap.rs`), waits for the socket, configures the microVM and starts it.

mod api;
mod ops;
mod rebase;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::{
    Backend, Host, LaunchOptions, Launched, Links, MachineKind, Power, PowerOff, Snapshots,
    VmmMetrics,
};
use crate::error::{Error, Result};
use crate::vmm::core::{Source, VmmBackend, VmmCore};
use crate::vmm::launch;
use crate::vmm::{Vmm, VmmSpec};

pub use api::SnapshotFiles;

/// The API socket in the state directory.
pub const API_SOCKET: &str = "firecracker.sock";
/// The metrics file in the state directory (`PUT /metrics`).
pub const METRICS_FILE: &str = "firecracker-metrics.json";
/// How long a guest may take to reset after Ctrl-Alt-Delete (which ends Firecracker).
const RESET_TIMEOUT: Duration = Duration::from_secs(120);

/// How a launch brings up the microVM.
enum Boot<'a> {
    /// Configure it from the start script's configuration and start it.
    Fresh(&'a VmmSpec),
    /// Load it from a snapshot, resumed.
    Snapshot(&'a SnapshotFiles),
}

/// Where the running launch's snapshots stand: the next one is a diff against `base` when
/// there is one. Each launch (a fresh start, a reboot, a restore) starts over.
#[derive(Debug, Default)]
struct Chain {
    /// The complete memory file of this launch's previous snapshot.
    base: Option<PathBuf>,
    /// Firecracker refused a diff snapshot: this launch takes full ones only.
    diff_refused: bool,
}

/// A Firecracker microVM.
pub struct FirecrackerBackend {
    core: VmmCore,
    chain: Mutex<Chain>,
}

impl FirecrackerBackend {
    /// A microVM configured by the start script `start_command`.
    pub fn new(start_command: impl Into<String>) -> Self {
        Self::from_source(Source::Script(start_command.into()))
    }

    /// A microVM configured by `source`.
    pub fn from_source(source: Source) -> Self {
        FirecrackerBackend {
            core: VmmCore::new(Vmm::Firecracker, source),
            chain: Mutex::new(Chain::default()),
        }
    }

    /// Starts a Firecracker process and brings up the microVM as `boot` says.
    fn start_vmm(&self, host: &dyn Host, boot: Boot<'_>) -> Result<Launched> {
        let info = host.info();
        let nics = match boot {
            Boot::Fresh(spec) => self.core.nics.ensure(info, &spec.vlans)?,
            Boot::Snapshot(_) => Vec::new(),
        };
        let socket = info.state_dir.join(API_SOCKET);
        let vsock = info.state_dir.join(launch::VSOCK_SOCKET);
        let metrics = info.state_dir.join(METRICS_FILE);
        // Firecracker opens the metrics file without creating it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics)
            .map_err(|e| Error::io(format!("cannot create {}", metrics.display()), e))?;
        *self.chain.lock().unwrap() = Chain::default();
        let configure = |api: &crate::vmm::api::Api| match boot {
            Boot::Fresh(spec) => api.send_all(&api::boot_calls(spec, &vsock, &nics, &metrics)),
            Boot::Snapshot(files) => {
                api.send_all(&[api::metrics_call(&metrics), api::snapshot_load(files)])
            }
        };
        let args = vec![
            "--api-sock".into(),
            socket.clone().into(),
            "--id".into(),
            vm_id(&info.name).into(),
        ];
        self.core
            .start(host, args, socket, api::fault_message, &configure)
    }
}

impl VmmBackend for FirecrackerBackend {
    fn core_mut(&mut self) -> &mut VmmCore {
        &mut self.core
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
        self.core.start_command()
    }

    fn launch(&self, host: &dyn Host, _options: LaunchOptions) -> Result<Launched> {
        let info = host.info();
        info.log("starting vm");
        drop(self.core.take_running());
        let spec = self.core.spec(info)?;
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

    fn vmm_metrics(&self) -> Option<&dyn VmmMetrics> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
