//! Capabilities: what only some backends can do. A backend offers one by returning `Some`
//! from its accessor on [`super::Backend`]; the machine turns a missing one into
//! `Error::Unsupported`, whose reason is [`Capability::lacking`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::shares::Mount;
use super::{Host, MachineInfo};
use crate::error::Result;
use crate::interrupt::Deadline;

/// The capabilities, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// [`Snapshots`].
    Snapshots,
    /// [`Monitor`].
    Monitor,
    /// [`Screen`].
    Screen,
    /// [`Keyboard`].
    Keyboard,
    /// [`Links`].
    Links,
    /// [`PortForwards`].
    PortForwards,
    /// [`Power`].
    Power,
    /// [`SerialConsole`].
    SerialConsole,
    /// [`Container`].
    Container,
    /// `Backend::switches_root`.
    SwitchRoot,
    /// [`VmmMetrics`].
    VmmMetrics,
}

impl Capability {
    /// What a backend without it lacks, as the end of an `Unsupported` message.
    pub fn lacking(self) -> &'static str {
        match self {
            Capability::Snapshots => "it cannot save a running machine",
            Capability::Monitor => "no QEMU monitor or QMP",
            Capability::Screen => "no display",
            Capability::Keyboard => "no keyboard",
            Capability::Links => "no NIC links to cut",
            Capability::PortForwards => "no user-mode network to forward host ports into",
            Capability::Power => "no power control beyond asking the guest",
            Capability::SerialConsole => "no serial console input",
            Capability::Container => "not a container",
            Capability::SwitchRoot => "no initrd stage: switch_root needs a QEMU machine",
            Capability::VmmMetrics => "no VMM metrics: only Firecracker writes them",
        }
    }
}

/// How a machine was brought back to a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewind {
    /// The running guest was rewound in place: the shell needs a resync and the shares a mount.
    /// Also a new launch the backend had the machine adopt whose session is not in step yet
    /// (a VMM that loaded the snapshot: its agent needs a new connection).
    InPlace,
    /// The machine adopted a new launch already at the snapshot (a warm standby), its shell in
    /// step and its shares mounted.
    Adopted,
}

/// Saving and restoring the running machine. The machine runs the order of operations
/// (`machine/snapshot.rs`): connect, unmount the shares, pause, save, resume, mount.
pub trait Snapshots: Send + Sync {
    /// The guest's shared directories must be unmounted around [`Snapshots::save`] (QEMU
    /// cannot save a guest with a 9p share mounted).
    fn unmounts_shares(&self) -> bool {
        true
    }
    /// Pauses the guest (no hook: the caller may hold other machines paused).
    fn pause(&self, info: &MachineInfo) -> Result<()>;
    /// Resumes it.
    fn resume(&self, info: &MachineInfo) -> Result<()>;
    /// Saves the paused guest as `name`; `Error::SnapshotRefused` when it cannot be saved.
    fn save(&self, info: &MachineInfo, name: &str) -> Result<()>;
    /// Brings the machine back to `name`, leaving it paused; it may have the machine adopt a
    /// new launch ([`Host::adopt`]).
    fn rewind(&self, host: &dyn Host, name: &str, mounts: &[Mount]) -> Result<Rewind>;
    /// After `name` was taken or restored: gets ready for the next restore of it (a warm
    /// standby, in the background).
    fn prepare(&self, _info: &MachineInfo, _name: &str, _mounts: &[Mount]) {}
    /// Waits until that is ready; false when there is nothing to wait for or `timeout` passed.
    fn wait_ready(&self, _timeout: Option<Duration>) -> Result<bool> {
        Ok(false)
    }
    /// The boot cache wants this launch saved, now that it first became ready.
    fn boot_save_wanted(&self) -> bool {
        false
    }
    /// Saves the paused guest for the boot cache (`mounts`: the shares unmounted for it);
    /// `Error::SnapshotRefused` when it cannot be saved.
    fn save_boot(&self, _info: &MachineInfo, _mounts: &[Mount]) -> Result<()> {
        Ok(())
    }
}

/// QEMU's monitor (HMP) and QMP.
pub trait Monitor: Send + Sync {
    /// Sends an HMP command; its answer up to the prompt.
    fn send_monitor_command(&self, info: &MachineInfo, command: &str) -> Result<String>;
    /// Runs a QMP command.
    fn qmp(&self, info: &MachineInfo, command: &str, arguments: Option<Value>) -> Result<Value>;
    /// The next QMP event until `deadline` (`None`: none came).
    fn next_qmp_event(&self, info: &MachineInfo, deadline: Deadline) -> Result<Option<Value>>;
    /// The monitor, QMP and shell sockets.
    fn socket_paths(&self, info: &MachineInfo) -> [PathBuf; 3];
}

/// A display.
pub trait Screen: Send + Sync {
    /// Writes the primary display to `path` as `format` (`ppm` or `png`).
    fn screen_dump(&self, info: &MachineInfo, path: &Path, format: &str) -> Result<()>;
}

/// A keyboard.
pub trait Keyboard: Send + Sync {
    /// The backend's name of a key given as a character or a name (`A` → `shift-a`).
    fn key_name<'k>(&self, key: &'k str) -> &'k str;
    /// Presses and releases the named key.
    fn press(&self, info: &MachineInfo, key: &str) -> Result<()>;
}

/// The guest's network links.
pub trait Links: Send + Sync {
    /// Cuts (`false`) or restores (`true`) the first VLAN link.
    fn set_link(&self, info: &MachineInfo, up: bool) -> Result<()>;
}

/// Host TCP ports forwarded into the guest.
pub trait PortForwards: Send + Sync {
    /// Forwards host TCP `host_port` to guest `guest_port`.
    fn forward_port(&self, info: &MachineInfo, host_port: u16, guest_port: u16) -> Result<()>;
}

/// Power control beyond asking the guest.
pub trait Power: Send + Sync {
    /// Ends the machine at once, as a power cut (the machine then waits for its process).
    fn crash(&self, info: &MachineInfo) -> Result<()>;
    /// The VMM has its own Ctrl-Alt-Delete ([`Power::reboot`]); false: `reboot` presses the
    /// keys on the backend's keyboard.
    fn has_reboot(&self) -> bool {
        false
    }
    /// Sends Ctrl-Alt-Delete by the VMM's own means (Firecracker's `SendCtrlAltDel`) and,
    /// when the guest's reset ends the VMM, has the machine adopt a new launch
    /// ([`Host::adopt`]); the machine then waits for a new handshake.
    fn reboot(&self, host: &dyn Host) -> Result<()> {
        Err(host.guest_error("this backend has no Ctrl-Alt-Delete of its own".to_string()))
    }
    /// Powers the guest off by the VMM's own means when the guest cannot be asked (no shell
    /// connected): true when it did, false when the VMM has none (the machine then sends
    /// [`PowerOff::Command`](super::PowerOff)'s signal).
    fn power_off_vmm(&self, _info: &MachineInfo) -> Result<bool> {
        Ok(false)
    }
}

/// Input to the serial console.
pub trait SerialConsole: Send + Sync {
    /// Writes `data` to the serial console.
    fn send_console(&self, info: &MachineInfo, data: &[u8]) -> Result<()>;
}

/// The VMM's own metrics.
pub trait VmmMetrics: Send + Sync {
    /// Has the VMM write its metrics now and returns them (one JSON object).
    fn vmm_metrics(&self, info: &MachineInfo) -> Result<Value>;
}

/// A container on the host's kernel.
pub trait Container: Send + Sync {
    /// The host pid of the container's PID 1, once connected.
    fn init_pid(&self) -> Option<u32>;
}
