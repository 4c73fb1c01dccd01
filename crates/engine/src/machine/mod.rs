//! A machine of a test: a [`Backend`] (how it runs) plus everything written once for all
//! backends (logging, polling-condition hooks, `succeed`, the `wait_*` family, systemd).

mod api;
mod files;
mod restart;
mod screens;
pub mod snapshot;
mod systemd;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::MachineKind;
use crate::console::Console;
use crate::error::Result;
use crate::interrupt::Deadline;
use crate::log::Logger;
use crate::nspawn::NspawnBackend;
use crate::process::ChildProcess;
use crate::qemu::QemuBackend;
use crate::trace::{SpanId, SpanKind, SpanStatus};
use crate::transport::shell::Reply;

pub use api::ExecOptions;

/// A hook run before every command and monitor command (upstream's polling conditions).
pub type Hook = Arc<dyn Fn() -> Result<()> + Send + Sync>;

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

/// How a machine runs: QEMU, systemd-nspawn, ...
pub trait Backend: Send + Sync {
    /// VM or container.
    fn kind(&self) -> MachineKind;
    /// The start script (or, for a VM, a shell command line).
    fn start_command(&self) -> &str;
    /// Starts the machine without waiting for it to boot. Does nothing when running.
    fn start(&self, info: &MachineInfo, allow_reboot: bool) -> Result<()>;
    /// Waits until commands can run (the backdoor handshake).
    fn connect(&self, info: &MachineInfo) -> Result<()>;
    /// True once started and until stopped.
    fn is_booted(&self) -> bool;
    /// True once commands can run.
    fn is_connected(&self) -> bool;
    /// The pid of the machine's process.
    fn pid(&self) -> Option<u32>;
    /// The machine's process (the start script, which execs QEMU or systemd-nspawn): the
    /// running one; a VM also keeps its last one after it stopped, as upstream.
    fn process(&self) -> Option<Arc<ChildProcess>>;
    /// Runs one command.
    fn execute(
        &self,
        info: &MachineInfo,
        command: &str,
        timeout: Option<Duration>,
        reply: Reply,
        deadline: Deadline,
    ) -> Result<(i32, Vec<u8>)>;
    /// Asks the guest to power off and waits for it.
    fn shutdown(&self, info: &MachineInfo) -> Result<()>;
    /// Waits until the machine's process has exited.
    fn wait_for_shutdown(&self, info: &MachineInfo) -> Result<()>;
    /// Kills the machine and frees everything it holds.
    fn release(&self, info: &MachineInfo);
    /// The console (serial port or journal).
    fn console(&self) -> &Arc<Console>;
    /// The backdoor shell.
    fn shell(&self) -> &crate::transport::slot::ShellSlot;
    /// The QEMU backend, for QEMU-only operations.
    fn as_qemu(&self) -> Option<&QemuBackend> {
        None
    }
    /// The systemd-nspawn backend, for container-only operations.
    fn as_nspawn(&self) -> Option<&NspawnBackend> {
        None
    }
}

/// One machine.
pub struct Machine {
    info: MachineInfo,
    backend: Box<dyn Backend>,
    hook: RwLock<Option<Hook>>,
    /// Snapshots taken, by name, with the shared-directory mounts to restore after them.
    snapshots: std::sync::Mutex<std::collections::BTreeMap<String, Vec<snapshot::Mount>>>,
    /// The span of a boot in progress (started, not yet connected).
    boot_span: std::sync::Mutex<Option<SpanId>>,
    /// `--keep-machine-state`: the state directory outlives a restart too.
    keep_state: bool,
}

impl Machine {
    /// Builds a machine; prepares its state directory (deleted first unless `keep_state`).
    pub fn new(info: MachineInfo, backend: Box<dyn Backend>, keep_state: bool) -> Result<Self> {
        prepare_state_dir(&info, keep_state)?;
        Ok(Machine {
            info,
            backend,
            hook: RwLock::new(None),
            snapshots: Default::default(),
            boot_span: Default::default(),
            keep_state,
        })
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Shared facts (dirs, logger).
    pub fn info(&self) -> &MachineInfo {
        &self.info
    }

    /// VM or container.
    pub fn kind(&self) -> MachineKind {
        self.backend.kind()
    }

    /// The QEMU backend, when this is a VM.
    pub fn qemu(&self) -> Option<&QemuBackend> {
        self.backend.as_qemu()
    }

    /// The systemd-nspawn backend, when this is a container.
    pub fn nspawn(&self) -> Option<&NspawnBackend> {
        self.backend.as_nspawn()
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

    /// Starts the machine (returns before it has booted). Its boot span runs from here to
    /// the first successful [`Machine::connect`].
    pub fn start(&self, allow_reboot: bool) -> Result<()> {
        crate::interrupt::check_ending()?;
        let was_booted = self.backend.is_booted();
        let logger = &self.info.logger;
        let span = (!was_booted).then(|| {
            logger.begin_detached(
                SpanKind::Boot,
                &format!("boot {}", self.name()),
                Some(self.name()),
            )
        });
        let started = self.backend.start(&self.info, allow_reboot);
        if let Some(span) = span {
            match &started {
                Ok(()) => *self.boot_span.lock().unwrap() = Some(span),
                Err(e) => logger.end_span(span, SpanStatus::Error(e.to_string())),
            }
        }
        started
    }

    /// Waits for the backdoor.
    pub fn connect(&self) -> Result<()> {
        crate::interrupt::check_ending()?;
        let connected = self.backend.connect(&self.info);
        if let Some(span) = self.boot_span.lock().unwrap().take() {
            let status = match &connected {
                Ok(()) => SpanStatus::Ok,
                Err(e) => SpanStatus::Error(e.to_string()),
            };
            self.info.logger.end_span(span, status);
        }
        connected
    }

    /// Started and connected.
    pub fn is_up(&self) -> bool {
        self.backend.is_booted() && self.backend.is_connected()
    }

    /// Started.
    pub fn booted(&self) -> bool {
        self.backend.is_booted()
    }

    /// Connected.
    pub fn connected(&self) -> bool {
        self.backend.is_connected()
    }

    /// The machine process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.backend.pid()
    }

    /// Powers off and waits.
    pub fn shutdown(&self) -> Result<()> {
        self.backend.shutdown(&self.info)
    }

    /// Waits until the machine has stopped.
    pub fn wait_for_shutdown(&self) -> Result<()> {
        self.backend.wait_for_shutdown(&self.info)
    }

    /// Kills the machine.
    pub fn release(&self) {
        self.backend.release(&self.info)
    }

    /// The console log since the last start.
    pub fn console_log(&self) -> String {
        self.backend.console().text()
    }

    /// The console.
    pub fn console(&self) -> &Arc<Console> {
        self.backend.console()
    }

    /// The machine's process (see [`Backend::process`]).
    pub fn process(&self) -> Option<Arc<ChildProcess>> {
        self.backend.process()
    }

    /// Logs a console line of the machine (`<name> # <line>`), as its console reader does.
    pub fn log_serial(&self, line: &str) {
        self.info.logger.serial(&self.info.name, line);
    }

    /// Marks the shell as needing a new handshake, as upstream's `connected = False` does
    /// (after the script made the guest reboot by itself).
    pub fn mark_disconnected(&self) {
        self.backend.shell().disconnect();
    }

    /// Writes raw bytes to the backdoor shell, bypassing the command framing (upstream's
    /// `machine.shell.send`): a command sent so must not write to its stdout, or the next
    /// command reads that output as its own answer.
    pub fn send_to_shell(&self, data: &[u8]) -> Result<()> {
        self.require_running("writing to the shell")?;
        self.backend
            .shell()
            .send_raw(&self.info, self.backend.console(), data)
    }

    /// Reads up to `max` raw bytes from the backdoor shell until `deadline`.
    pub fn recv_from_shell(&self, max: usize, deadline: Deadline) -> Result<Vec<u8>> {
        self.require_running("reading from the shell")?;
        self.backend
            .shell()
            .recv_raw(&self.info, self.backend.console(), max, deadline)
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
    use std::os::unix::fs::DirBuilderExt;
    let dir: &Path = &info.state_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| crate::error::Error::io(format!("creating {}", dir.display()), e))
}
