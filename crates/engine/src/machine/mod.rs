//! A machine of a test: a [`Backend`] (which only launches and stops it) plus everything
//! written once for all backends: the lifecycle (`lifecycle.rs`: start, connect and the
//! handshake, shutdown, release, adopting a new launch), the command session (the backdoor
//! shell or the guest agent) and its error mapping (`shell.rs`), logging, polling-condition hooks, `succeed`, the `wait_*` family,
//! systemd, screens, snapshots, and the operations that need a capability (`control.rs`).

mod api;
mod control;
mod files;
mod lifecycle;
mod netem;
#[cfg(test)]
mod netem_tests;
mod restart;
mod screen;
mod screens;
#[cfg(test)]
mod session_tests;
pub mod shell;
pub mod snapshot;
mod systemd;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::backend::shares::Mount;
use crate::backend::{Backend, Capability, ShellSetup};
use crate::console::Console;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::kind::MachineKind;
use crate::process::ChildProcess;
use crate::trace::SpanId;
use crate::transport::connector::Connector;

pub use crate::backend::MachineInfo;
pub use api::ExecOptions;
pub use control::python_repr;
pub use lifecycle::State;
pub use screen::screenshot_path;
use shell::ShellSlot;

/// A hook run before every command and monitor command (upstream's polling conditions).
pub type Hook = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// The running launch of a machine (see [`crate::backend::Launched`]).
struct Run {
    process: Arc<ChildProcess>,
    console_reader: Option<JoinHandle<()>>,
    connector: Arc<Mutex<Box<dyn Connector>>>,
    /// The agent's connector, when the machine uses the agent (see `lifecycle.rs`).
    agent: Option<Arc<Mutex<Box<dyn Connector>>>>,
    setup: Arc<ShellSetup>,
}

/// One machine.
pub struct Machine {
    info: MachineInfo,
    backend: Box<dyn Backend>,
    console: Arc<Console>,
    shell: ShellSlot,
    run: Mutex<Option<Run>>,
    /// The process of the launch that ran last, kept after it stopped when the kind does.
    last_process: Mutex<Option<Arc<ChildProcess>>>,
    /// When the running launch started (the boot timeout counts from here).
    started_at: Mutex<Option<Instant>>,
    /// Held while a launch is being started, so two callers do not both launch.
    starting: Mutex<()>,
    /// The running launch was started with `allow_reboot` (see `Facts::reset_ends_process`).
    allow_reboot: std::sync::atomic::AtomicBool,
    hook: RwLock<Option<Hook>>,
    /// Snapshots taken, by name, with the shared-directory mounts to restore after them.
    snapshots: Mutex<std::collections::BTreeMap<String, Vec<Mount>>>,
    /// The span of a boot in progress (started, not yet connected).
    boot_span: Mutex<Option<SpanId>>,
    /// `--keep-machine-state`: the state directory outlives a restart too.
    keep_state: bool,
    /// The report's band of each VLAN whose network conditions are set (see `netem.rs`).
    network_bands: Mutex<std::collections::BTreeMap<u32, SpanId>>,
}

impl Machine {
    /// Builds a machine; prepares its state directory (deleted first unless `keep_state`).
    pub fn new(info: MachineInfo, backend: Box<dyn Backend>, keep_state: bool) -> Result<Self> {
        prepare_state_dir(&info, keep_state)?;
        let console = Console::with_file(info.state_dir.join(crate::console::FILE_NAME));
        Ok(Machine {
            info,
            backend,
            console: Arc::new(console),
            shell: ShellSlot::default(),
            run: Mutex::new(None),
            last_process: Mutex::new(None),
            started_at: Mutex::new(None),
            starting: Mutex::new(()),
            allow_reboot: Default::default(),
            hook: RwLock::new(None),
            snapshots: Default::default(),
            boot_span: Default::default(),
            keep_state,
            network_bands: Default::default(),
        })
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The backend, for tests that drive its capabilities directly.
    #[cfg(test)]
    pub(crate) fn backend_for_tests(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Shared facts (dirs, logger).
    pub fn info(&self) -> &MachineInfo {
        &self.info
    }

    /// VM or container.
    pub fn kind(&self) -> MachineKind {
        self.backend.kind()
    }

    /// The start script or command line.
    pub fn start_command(&self) -> &str {
        self.backend.start_command()
    }

    /// Sets the hook run before every command (polling conditions).
    pub fn set_hook(&self, hook: Option<Hook>) {
        *self.hook.write().unwrap() = hook;
    }

    pub(crate) fn run_hook(&self) -> Result<()> {
        let hook = self.hook.read().unwrap().clone();
        match hook {
            Some(h) => h(),
            None => Ok(()),
        }
    }

    /// Logs a line attributed to the machine.
    pub fn log(&self, msg: &str) {
        self.info.log(msg);
    }

    /// Opens a nested log block attributed to the machine.
    pub fn nested(&self, msg: &str) -> crate::log::Block<'_> {
        self.info.logger.nested(msg, Some(&self.info.name))
    }

    /// Opens a nested log block that is a machine operation (span `op`).
    pub fn op(&self, op: &str, msg: &str) -> crate::log::Block<'_> {
        self.info.logger.operation(op, msg, Some(&self.info.name))
    }

    /// The console log since the last start.
    pub fn console_log(&self) -> String {
        self.console.text()
    }

    /// The console.
    pub fn console(&self) -> &Arc<Console> {
        &self.console
    }

    /// Logs a console line of the machine (`<name> # <line>`), as its console reader does.
    pub fn log_serial(&self, line: &str) {
        self.info.logger.serial(&self.info.name, line);
    }

    /// Marks the shell as needing a new handshake, as upstream's `connected = False` does
    /// (after the script made the guest reboot by itself).
    pub fn mark_disconnected(&self) {
        self.shell.disconnect();
        self.leave_agent_after_reset();
    }

    /// Writes raw bytes to the backdoor shell, bypassing the command framing (upstream's
    /// `machine.shell.send`): a command sent so must not write to its stdout, or the next
    /// command reads that output as its own answer.
    pub fn send_to_shell(&self, data: &[u8]) -> Result<()> {
        self.require_running("writing to the shell")?;
        self.require_backdoor("writing to the shell")?;
        self.shell.send_raw(&self.info, &self.console, data)
    }

    /// Reads up to `max` raw bytes from the backdoor shell until `deadline`.
    pub fn recv_from_shell(&self, max: usize, deadline: Deadline) -> Result<Vec<u8>> {
        self.require_running("reading from the shell")?;
        self.require_backdoor("reading from the shell")?;
        self.shell
            .recv_raw(&self.info, &self.console, max, deadline)
    }

    /// `Unsupported` for `operation`, which needs `capability`.
    pub(crate) fn unsupported(&self, operation: &str, capability: Capability) -> Error {
        Error::Unsupported {
            machine: self.name().to_string(),
            operation: operation.to_string(),
            backend: self.kind().backend_name().to_string(),
            reason: capability.lacking().to_string(),
        }
    }

    /// The capability `found`, or `Unsupported` for `operation`.
    pub(crate) fn require<'a, T: ?Sized>(
        &self,
        operation: &str,
        capability: Capability,
        found: Option<&'a T>,
    ) -> Result<&'a T> {
        found.ok_or_else(|| self.unsupported(operation, capability))
    }

    /// Deletes the state directory and makes it again, empty (upstream's
    /// `cleanup_statedir`, which the driver runs for every machine unless
    /// `--keep-machine-state`). Not while the machine runs: its disk and sockets are there.
    pub fn cleanup_state_dir(&self) -> Result<()> {
        if self.booted() {
            return Err(crate::error::Error::InvalidState {
                machine: self.name().to_string(),
                message: "cannot delete the state directory of a running machine (its disk image and sockets are in it): shut it down or release() it first".to_string(),
            });
        }
        delete_state_dir(&self.info)?;
        create_state_dir(&self.info)
    }

    /// Raw shell access needs the backdoor's stream, which a launch reached only through its
    /// agent does not have.
    fn require_backdoor(&self, what: &str) -> Result<()> {
        if !self.shell.agent_only() {
            return Ok(());
        }
        Err(crate::error::Error::InvalidState {
            machine: self.name().to_string(),
            message: format!(
                "{what}: this machine's commands go through its guest agent and it has no backdoor shell to write to raw (set {}=backdoor for raw shell access)",
                crate::config::TRANSPORT_VAR
            ),
        })
    }

    fn require_running(&self, what: &str) -> Result<()> {
        if self.booted() {
            return Ok(());
        }
        Err(crate::error::Error::InvalidState {
            machine: self.name().to_string(),
            message: format!("{what}: the machine is not running (call start() first)"),
        })
    }
}

fn prepare_state_dir(info: &MachineInfo, keep_state: bool) -> Result<()> {
    if !keep_state && info.state_dir.exists() {
        delete_state_dir(info)?;
    }
    create_state_dir(info)
}

/// Deletes the state directory, logging upstream's two lines.
fn delete_state_dir(info: &MachineInfo) -> Result<()> {
    let dir: &Path = &info.state_dir;
    match remove_state_dir(dir) {
        Err(crate::error::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        other => other?,
    }
    info.log(&format!(
        "deleting machine state directory {}",
        dir.display()
    ));
    info.log("if you want to keep the machine state, pass --keep-machine-state");
    Ok(())
}

fn remove_state_dir(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir)
        .map_err(|e| crate::error::Error::io(format!("deleting {}", dir.display()), e))
}

fn create_state_dir(info: &MachineInfo) -> Result<()> {
    let dir: &Path = &info.state_dir;
    crate::private::dir(dir)
        .map_err(|e| crate::error::Error::io(format!("creating {}", dir.display()), e))
}
