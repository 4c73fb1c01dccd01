//! The backend seam. A backend only launches and stops a machine; [`crate::machine::Machine`]
//! owns everything else once for all backends (connect, handshake, state, shutdown, release).
//!
//! ```text
//! Machine::start ──► Backend::launch(host, options) ──► Launched { process, console reader,
//!                                                          connector, shell setup, agent }
//! Machine::connect ─► Connector::connect ─► Shell (transport) ─► handshake
//!                  or, with an agent: agent connector ─► Agent (transport) ─► HELLO
//! Machine::release ─► Backend::kill ─► Backend::stopped
//! ```
//!
//! What only some backends can do is a capability ([`caps`]): a backend returns `Some` from
//! the accessor of each one it has; the machine raises `Error::Unsupported` for the others.
//! Adding a backend: see `docs/architecture.md`.

pub mod caps;
pub mod shares;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::kind::MachineKind;
pub use caps::{
    Capability, Container, Keyboard, Links, Monitor, PortForwards, Power, Rewind, Screen,
    SerialConsole, Snapshots, VmmMetrics,
};

use crate::console::Console;
use crate::error::{Error, Result};
use crate::log::Logger;
use crate::process::ChildProcess;
use crate::transport::connector::Connector;
use crate::transport::shell::{Shell, VM_PREAMBLE};

/// What every backend knows about its machine.
pub struct MachineInfo {
    /// The name as given (`run-<name>-vm`).
    pub name: String,
    /// The run's log.
    pub logger: Arc<Logger>,
    /// `<tmp>/vm-state-<name>`.
    pub state_dir: PathBuf,
    /// `<tmp>/shared-xchg`, the host side of `/tmp/shared`.
    pub shared_dir: PathBuf,
    /// The output directory.
    pub out_dir: PathBuf,
    /// Limit from start to handshake.
    pub boot_timeout: Option<Duration>,
    /// Extra environment for the start script (`QEMU_VDE_SOCKET_<n>`).
    pub env: Vec<(String, String)>,
    /// Show the display over VNC on 127.0.0.1 (`--vnc`).
    pub vnc: bool,
    /// Which transport commands take (`NIXOS_TEST_NG_TRANSPORT`).
    pub transport: crate::config::Transport,
    /// The machine's number in the run, from 1 by sorted name (nixpkgs' network.nix): the
    /// last byte of its VLAN NICs' MAC addresses, `52:54:00:12:<vlan>:<node>`.
    pub node: u32,
    /// The boot cache, when the run uses it (QEMU VMs).
    pub boot_cache: Option<crate::qemu::boot_cache::Store>,
}

impl MachineInfo {
    /// Logs a line attributed to the machine.
    pub fn log(&self, msg: &str) {
        self.logger.log(msg, Some(&self.name));
    }

    /// The driver's tmp dir, which holds the state directory.
    pub fn tmp_dir(&self) -> &Path {
        self.state_dir.parent().unwrap_or(&self.state_dir)
    }

    /// When a machine started at `started` must have answered (`boot_timeout`).
    pub fn boot_deadline(&self, started: std::time::Instant) -> crate::interrupt::Deadline {
        match self.boot_timeout {
            Some(t) => crate::interrupt::Deadline::after(Some(t.saturating_sub(started.elapsed()))),
            None => crate::interrupt::Deadline::NEVER,
        }
    }
}

/// What a launch is started with.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaunchOptions {
    /// A reboot of the guest restarts it instead of ending the machine (QEMU: no
    /// `-no-reboot`).
    pub allow_reboot: bool,
}

/// How the machine drives the guest's shell on the connector's stream.
#[derive(Debug, Clone)]
pub struct ShellSetup {
    /// Runs before every command (the shell options).
    pub preamble: &'static str,
    /// The stream is 8-bit clean, so the output may come back raw (`Framing::Raw`).
    pub raw_output: bool,
    /// Sent on a new stream before the handshake is awaited (a container's shell setup and
    /// its `echo` of the handshake line).
    pub greeting: Option<String>,
    /// Logged, after "Guest root shell did not produce any data yet...", every 30 s without
    /// data before the handshake; `None`: nothing is logged.
    pub idle_hint: Option<&'static str>,
    /// Logged once the handshake passed.
    pub connected_line: &'static str,
    /// The bytes of a console's paced reply per acknowledgement (see `transport::shell`).
    pub pace_chunk: usize,
}

impl ShellSetup {
    /// The NixOS backdoor (`backdoor.service` on a console of the guest), which puts the
    /// console in raw mode (`stty raw -echo`) before its handshake.
    pub fn backdoor() -> Self {
        ShellSetup {
            preamble: VM_PREAMBLE,
            raw_output: true,
            greeting: None,
            idle_hint: Some(
                "  To debug, enter the VM and run 'systemctl status backdoor.service'.",
            ),
            connected_line: "connected to guest root shell",
            pace_chunk: crate::transport::shell::ACK_EVERY,
        }
    }

    /// Paces a console's replies by `bytes` per acknowledgement.
    pub fn paced_by(mut self, bytes: usize) -> Self {
        self.pace_chunk = bytes;
        self
    }
}

/// What [`Backend::launch`] hands the machine: everything it needs to own the running machine.
pub struct Launched {
    /// The machine's process (its process group is killed on release).
    pub process: Arc<ChildProcess>,
    /// The thread reading the machine's console stream into the machine's [`Console`] (which
    /// it closes at the end of the stream).
    pub console_reader: JoinHandle<()>,
    /// How to reach the guest's shell.
    pub connector: Box<dyn Connector>,
    /// How to drive it.
    pub shell: ShellSetup,
    /// A shell already in step with the guest (a warm standby's): no handshake is needed.
    pub shell_in_step: Option<Shell>,
    /// How to reach the guest's agent (`transport/agent.rs`), when the launch set one up;
    /// the machine then uses it instead of the shell unless `NIXOS_TEST_NG_TRANSPORT` says
    /// otherwise.
    pub agent: Option<Box<dyn Connector>>,
}

/// What a backend may use of its machine; the machine implements it.
pub trait Host: Sync {
    /// The machine's facts.
    fn info(&self) -> &MachineInfo;
    /// The machine's console (a launch's reader feeds it).
    fn console(&self) -> &Arc<Console>;
    /// The machine's process, while launched.
    fn process(&self) -> Option<Arc<ChildProcess>>;
    /// Replaces the running launch by `launched` (a warm standby taking over): the old
    /// process is killed and its console reader joined first, then the console reopens.
    fn adopt(&self, launched: Launched);
    /// A guest failure naming the machine, with the console's last lines.
    fn guest_error(&self, message: String) -> Error;
}

/// How a guest is asked to power off (the machine then waits for its process to end).
#[derive(Debug, Clone, Copy)]
pub enum PowerOff {
    /// These bytes, raw on the shell's stream (upstream's `poweroff\n`), when there is one.
    Raw(&'static [u8]),
    /// This command when connected, else this signal to the process group.
    Command(&'static str, i32),
}

/// How a machine runs: QEMU, systemd-nspawn, ...: launch and stop, plus the capabilities it
/// offers.
pub trait Backend: Send + Sync {
    /// Which kind of machine this backend runs.
    fn kind(&self) -> MachineKind;
    /// The start script (or, for a VM, a shell command line).
    fn start_command(&self) -> &str;
    /// Starts the machine's process and its console reader, without waiting for the guest's
    /// shell. The machine's console was reset just before.
    fn launch(&self, host: &dyn Host, options: LaunchOptions) -> Result<Launched>;
    /// How to ask the guest to power off.
    fn power_off(&self) -> PowerOff;
    /// Kills a launch's process and whatever of the machine it does not take along.
    fn kill(&self, _host: &dyn Host, process: &ChildProcess) {
        process.kill();
    }
    /// A launch ended (its process exited and was waited for, or was killed): forget what the
    /// backend kept of it. `released`: the machine is released, not just powered off.
    fn stopped(&self, _released: bool) {}
    /// A restart brings the machine back to the state right after its boot (a container on
    /// a fresh overlay): its snapshots are restarts.
    fn restart_resets(&self) -> bool {
        false
    }
    /// The guest can boot through an initrd with a backdoor and switch to its root.
    fn switches_root(&self) -> bool {
        false
    }
    /// Saving and restoring the running machine.
    fn snapshots(&self) -> Option<&dyn Snapshots> {
        None
    }
    /// A monitor (QEMU's HMP and QMP).
    fn monitor(&self) -> Option<&dyn Monitor> {
        None
    }
    /// A display to take pictures of.
    fn screen(&self) -> Option<&dyn Screen> {
        None
    }
    /// No display device, but a shell: the machine captures the guest's X display from inside
    /// the guest, through its agent (`screen/guest.rs`), for screenshots and OCR. Only
    /// asked when [`Backend::screen`] is `None`.
    fn captures_guest_display(&self) -> bool {
        false
    }
    /// A keyboard to press keys on.
    fn keyboard(&self) -> Option<&dyn Keyboard> {
        None
    }
    /// Network links to cut and restore.
    fn links(&self) -> Option<&dyn Links> {
        None
    }
    /// Host ports forwarded into the guest.
    fn port_forwards(&self) -> Option<&dyn PortForwards> {
        None
    }
    /// Power control beyond asking the guest.
    fn power(&self) -> Option<&dyn Power> {
        None
    }
    /// Input to the serial console.
    fn serial_console(&self) -> Option<&dyn SerialConsole> {
        None
    }
    /// The guest is a container on the host's kernel.
    fn container(&self) -> Option<&dyn Container> {
        None
    }
    /// The VMM's own metrics.
    fn vmm_metrics(&self) -> Option<&dyn VmmMetrics> {
        None
    }
}
