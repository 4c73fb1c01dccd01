//! The QEMU backend: a start script following the upstream `run-<name>-vm` contract,
//! the shell backdoor on a virtconsole, the HMP monitor and QMP.

mod monitor;
mod ops;
mod qmp;
pub mod screen;
mod standby;
mod vnc;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use monitor::Monitor;
pub use ops::char_to_key;
pub use qmp::Qmp;
pub(crate) use standby::Rewind;
use standby::Standbys;
pub use vnc::VncAddress;

use crate::config::MachineKind;
use crate::console::Console;
use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::machine::{Backend, MachineInfo};
use crate::process::{self, ChildProcess};
use crate::transport::shell::{Reply, Shell, ShellError};
use crate::transport::slot::{guest_error, ShellSlot};

/// How long QEMU may take to connect to the driver's sockets after the start script runs.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(300);

/// The HMP monitor's socket in a QEMU's directory (the driver listens, QEMU connects).
pub const MONITOR_SOCKET: &str = "monitor";
/// The QMP socket (QEMU listens, the driver connects).
pub const QMP_SOCKET: &str = "qmp";
/// The backdoor shell's socket (the driver listens, QEMU connects).
pub const SHELL_SOCKET: &str = "shell";

/// Whether QEMU gets a display (upstream: `DISPLAY` or `WAYLAND_DISPLAY` is set); else
/// `-nographic` is appended.
pub fn display_available() -> bool {
    std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
}

/// The variables a start script gets on top of the driver's environment (upstream's
/// `QemuStartCommand.build_environment`).
pub fn start_environment(state_dir: &Path, shared_dir: &Path) -> Vec<(String, String)> {
    vec![
        ("TMPDIR".into(), state_dir.display().to_string()),
        ("SHARED_DIR".into(), shared_dir.display().to_string()),
        ("USE_TMPDIR".into(), "1".into()),
    ]
}

/// QEMU's control channels: the HMP monitor and QMP.
pub struct Control {
    monitor: Mutex<Monitor>,
    qmp: Qmp,
}

impl Control {
    /// The QMP session.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }
}

/// The control channels are set up in the background: QEMU answers on them only once its
/// main loop runs (after loading kernel and initrd), and `start()` need not wait for that.
enum ControlState {
    Pending(JoinHandle<Result<Control>>),
    Ready(Arc<Control>),
    Failed(String),
}

/// A running QEMU process and its control channels.
pub struct Running {
    process: Arc<ChildProcess>,
    control: Mutex<ControlState>,
    console_reader: Mutex<Option<JoinHandle<()>>>,
    /// Its TMPDIR: the machine's state directory, or the directory of the standby it was.
    dir: PathBuf,
}

impl Running {
    /// The monitor and QMP, once QEMU answers on them (waits for that on first use).
    pub fn control(&self, info: &MachineInfo) -> Result<Arc<Control>> {
        let mut state = self.control.lock().unwrap();
        if let ControlState::Pending(_) = &*state {
            let ControlState::Pending(handle) =
                std::mem::replace(&mut *state, ControlState::Failed(String::new()))
            else {
                unreachable!()
            };
            *state = match handle.join() {
                Ok(Ok(control)) => ControlState::Ready(Arc::new(control)),
                Ok(Err(e)) => ControlState::Failed(e.to_string()),
                Err(_) => ControlState::Failed("the control-channel thread panicked".to_string()),
            };
        }
        match &*state {
            ControlState::Ready(c) => Ok(c.clone()),
            ControlState::Failed(msg) => Err(Error::Guest {
                machine: info.name.clone(),
                message: format!("QEMU's monitor/QMP is not available: {msg}"),
                console_tail: Vec::new(),
            }),
            ControlState::Pending(_) => unreachable!(),
        }
    }
}

/// What starting one QEMU of a machine takes, owned, so that a standby can start in the
/// background: the start script, its TMPDIR (which also holds the driver's sockets), the
/// environment and extra arguments.
#[derive(Clone)]
struct Launch {
    start_command: String,
    dir: PathBuf,
    shared_dir: PathBuf,
    env: Vec<(String, String)>,
    allow_reboot: bool,
    /// `--vnc`: the display number from which QEMU looks for a free one.
    vnc_from: Option<u16>,
    extra: Vec<String>,
}

impl Launch {
    fn command(&self) -> Command {
        let mut args =
            QemuBackend::appended_args(&self.dir, self.allow_reboot, display_available());
        if let Some(first) = self.vnc_from {
            args.extend(vnc::args(first));
        }
        args.extend(self.extra.iter().cloned());
        let mut cmd = if Path::new(&self.start_command).is_file() {
            let mut c = Command::new(&self.start_command);
            c.args(&args);
            c
        } else {
            // A command line (create_machine with a string): run through a shell as upstream
            // does; the process-group kill takes the shell and QEMU alike.
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!("{} \"$@\"", self.start_command))
                .arg("sh")
                .args(&args);
            c
        };
        cmd.current_dir(&self.dir)
            .envs(start_environment(&self.dir, &self.shared_dir))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }
}

/// How waiting for QEMU to connect to one of the driver's sockets failed.
enum AcceptError {
    Exited(std::process::ExitStatus),
    TimedOut,
    Io(std::io::Error),
    Interrupted,
}

/// Waits until QEMU connects to `listener`, or exits, or `deadline` passes.
fn accept_from(
    listener: &UnixListener,
    process: &ChildProcess,
    deadline: Deadline,
) -> std::result::Result<UnixStream, AcceptError> {
    loop {
        let mut fds = [libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, deadline.slice().as_millis() as i32) };
        if n > 0 {
            return listener
                .accept()
                .map(|(stream, _)| stream)
                .map_err(AcceptError::Io);
        }
        if let Some(status) = process.exit_status() {
            return Err(AcceptError::Exited(status));
        }
        if interrupt::check().is_err() {
            return Err(AcceptError::Interrupted);
        }
        if deadline.expired() {
            return Err(AcceptError::TimedOut);
        }
    }
}

/// Binds `dir/name` (replacing a stale socket).
fn listen_at(dir: &Path, name: &str) -> std::io::Result<UnixListener> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path)
}

/// A QEMU VM.
pub struct QemuBackend {
    start_command: String,
    console: Arc<Console>,
    running: Mutex<Option<Arc<Running>>>,
    /// The process of the QEMU that ran last, kept after it stopped (upstream's `process`).
    last_process: Mutex<Option<Arc<ChildProcess>>>,
    shell: ShellSlot,
    started_at: Mutex<Option<Instant>>,
    /// What the running QEMU was started with (a standby gets the same).
    allow_reboot: AtomicBool,
    standbys: Standbys,
    /// Where the machine's display was last served (`--vnc`).
    vnc: Arc<Mutex<Option<VncAddress>>>,
}

impl QemuBackend {
    /// A VM started by `start_command` (a start-script path, or a shell command line).
    pub fn new(start_command: impl Into<String>) -> Self {
        let mut start_command = start_command.into();
        if Path::new(&start_command).is_file() {
            if let Ok(abs) = std::path::absolute(&start_command) {
                start_command = abs.display().to_string();
            }
        }
        QemuBackend {
            start_command,
            console: Arc::default(),
            running: Mutex::new(None),
            last_process: Mutex::new(None),
            shell: ShellSlot::default(),
            started_at: Mutex::new(None),
            allow_reboot: AtomicBool::new(false),
            standbys: Standbys::default(),
            vnc: Arc::default(),
        }
    }

    /// The running QEMU, or an error naming the machine.
    pub fn running(&self, info: &MachineInfo) -> Result<Arc<Running>> {
        self.running
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::InvalidState {
                machine: info.name.clone(),
                message: "the machine is not running (call start() first)".to_string(),
            })
    }

    /// The arguments the driver appends to the start script, in upstream's order, for the
    /// sockets in `state_dir`.
    pub fn appended_args(state_dir: &Path, allow_reboot: bool, graphical: bool) -> Vec<String> {
        Self::appended_args_for(
            &state_dir.join(MONITOR_SOCKET),
            &state_dir.join(QMP_SOCKET),
            &state_dir.join(SHELL_SOCKET),
            allow_reboot,
            graphical,
        )
    }

    /// The arguments the driver appends to the start script for the given sockets (upstream's
    /// `QemuStartCommand.cmd`).
    pub fn appended_args_for(
        monitor: &Path,
        qmp: &Path,
        shell: &Path,
        allow_reboot: bool,
        graphical: bool,
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-monitor".into(),
            format!("unix:{}", monitor.display()),
            "-chardev".into(),
            format!("socket,id=shell,path={}", shell.display()),
            "-device".into(),
            "virtio-serial".into(),
            "-device".into(),
            "virtconsole,chardev=shell".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-serial".into(),
            "stdio".into(),
        ];
        if !allow_reboot {
            args.push("-no-reboot".into());
        }
        if !graphical {
            args.push("-nographic".into());
        }
        args
    }

    /// How to start a QEMU of this machine with `dir` as its TMPDIR and socket directory.
    fn launch(&self, info: &MachineInfo, dir: &Path, allow_reboot: bool) -> Launch {
        Launch {
            start_command: self.start_command.clone(),
            dir: dir.to_path_buf(),
            shared_dir: info.shared_dir.clone(),
            env: info.env.clone(),
            allow_reboot,
            // the machine's previous display when it is still free
            vnc_from: info
                .vnc
                .then(|| self.vnc_address().map_or(0, |a| a.display())),
            extra: Vec::new(),
        }
    }

    /// Where the machine's display is served over VNC (`--vnc`), once QEMU said so.
    pub fn vnc_address(&self) -> Option<VncAddress> {
        *self.vnc.lock().unwrap()
    }

    fn guest_error(&self, info: &MachineInfo, message: String) -> Error {
        guest_error(info, &self.console, message)
    }

    /// Describes how the QEMU process ended, waiting briefly for it to do so.
    fn exit_note(&self) -> String {
        let run = self.running.lock().unwrap().clone();
        match run.and_then(|r| {
            r.process
                .wait(Deadline::after(Some(Duration::from_secs(2))))
        }) {
            Some(status) => format!(" (QEMU {status})"),
            None => String::new(),
        }
    }

    fn accept(
        &self,
        info: &MachineInfo,
        listener: &UnixListener,
        what: &str,
        process: &ChildProcess,
    ) -> Result<UnixStream> {
        match accept_from(listener, process, Deadline::after(Some(SOCKET_TIMEOUT))) {
            Ok(stream) => Ok(stream),
            Err(AcceptError::Io(e)) => Err(Error::io(
                format!("{}: accepting the {what} socket", info.name),
                e,
            )),
            Err(AcceptError::Interrupted) => Err(Error::Interrupted),
            Err(AcceptError::Exited(status)) => {
                // Let the console reader catch the last lines before reporting them.
                std::thread::sleep(Duration::from_millis(50));
                Err(self.guest_error(
                    info,
                    format!(
                        "start script `{}` exited ({status}) before QEMU connected to the {what} socket",
                        self.start_command
                    ),
                ))
            }
            Err(AcceptError::TimedOut) => Err(self.guest_error(
                info,
                format!(
                    "QEMU did not connect to the {what} socket within {} s",
                    SOCKET_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    fn listen(info: &MachineInfo, name: &str) -> Result<(UnixListener, PathBuf)> {
        let path = info.state_dir.join(name);
        let l = listen_at(&info.state_dir, name)
            .map_err(|e| Error::io(format!("{}: binding {}", info.name, path.display()), e))?;
        Ok((l, path))
    }

    fn do_start(&self, info: &MachineInfo, allow_reboot: bool) -> Result<()> {
        info.log("starting vm");
        let (monitor_l, _) = Self::listen(info, MONITOR_SOCKET)?;
        let (shell_l, _) = Self::listen(info, SHELL_SOCKET)?;
        let qmp_path = info.state_dir.join(QMP_SOCKET);
        let _ = std::fs::remove_file(&qmp_path);
        std::fs::create_dir_all(&info.shared_dir)
            .map_err(|e| Error::io(format!("creating {}", info.shared_dir.display()), e))?;

        self.console.reset();
        *self.started_at.lock().unwrap() = Some(Instant::now());
        self.allow_reboot.store(allow_reboot, Ordering::SeqCst);
        let cmd = self.launch(info, &info.state_dir, allow_reboot).command();
        let process = process::spawn(cmd).map_err(|e| {
            Error::Config(format!(
                "cannot run start script `{}` of machine `{}`: {e}",
                self.start_command, info.name
            ))
        })?;
        let stdout = process.take_stdout().expect("stdout is piped");
        let reader = self
            .console
            .spawn_reader(stdout, info.name.clone(), info.logger.clone());

        let result = (|| {
            let monitor = self.accept(info, &monitor_l, "monitor", &process)?;
            let shell = self.accept(info, &shell_l, "shell", &process)?;
            Ok((monitor, shell))
        })();
        let (monitor, shell) = match result {
            Ok(v) => v,
            Err(e) => {
                process.kill();
                let _ = reader.join();
                return Err(e);
            }
        };
        let pid = process.pid();
        let announce = info.vnc.then(|| {
            let (logger, name, slot) = (info.logger.clone(), info.name.clone(), self.vnc.clone());
            move |qmp: &Qmp| match vnc::query(qmp) {
                Ok(address) => {
                    *slot.lock().unwrap() = Some(address);
                    logger.log(&address.announcement(), Some(&name));
                }
                Err(e) => logger.log(&format!("no display over VNC: {e}"), Some(&name)),
            }
        });
        self.shell.set(
            Shell::new(
                shell
                    .try_clone()
                    .map_err(|e| Error::io("shell socket", e))?,
            ),
            &shell,
        );
        let control = std::thread::Builder::new()
            .name(format!("ntng-control-{}", info.name))
            .spawn(move || {
                let qmp = Qmp::connect(&qmp_path, Deadline::after(Some(Duration::from_secs(60))))?;
                if let Some(announce) = announce {
                    announce(&qmp);
                }
                let mut monitor = Monitor::new(monitor);
                monitor.wait_for_prompt(Deadline::after(Some(Duration::from_secs(120))))?;
                Ok(Control {
                    monitor: Mutex::new(monitor),
                    qmp,
                })
            })
            .expect("cannot start a control-channel thread");
        *self.running.lock().unwrap() = Some(Arc::new(Running {
            process: Arc::new(process),
            control: Mutex::new(ControlState::Pending(control)),
            console_reader: Mutex::new(Some(reader)),
            dir: info.state_dir.clone(),
        }));
        info.log(&format!("QEMU running (pid {pid})"));
        Ok(())
    }

    fn handshake(&self, info: &MachineInfo) -> Result<()> {
        let started = self.started_at.lock().unwrap().unwrap_or_else(Instant::now);
        let deadline = info.boot_deadline(started);
        let tic = Instant::now();
        let mut last_note = Instant::now();
        let r = self.shell.handshake(deadline, &mut || {
            if last_note.elapsed() >= Duration::from_secs(30) {
                last_note = Instant::now();
                info.log("Guest root shell did not produce any data yet...");
                info.log("  To debug, enter the VM and run 'systemctl status backdoor.service'.");
            }
            !deadline.expired()
        });
        match r {
            Ok(()) => {}
            Err(ShellError::Interrupted) => return Err(Error::Interrupted),
            Err(ShellError::TimedOut) => {
                let secs = info.boot_timeout.unwrap_or_default().as_secs_f64();
                return Err(self.guest_error(
                    info,
                    format!(
                        "no backdoor handshake within {secs:.0} s of the start: the guest never printed `Spawning backdoor root shell...` (raise --boot-timeout if it is just slow)"
                    ),
                ));
            }
            Err(ShellError::Disconnected) => {
                let note = self.exit_note();
                return Err(self.guest_error(
                    info,
                    format!("the machine stopped before the backdoor handshake{note}"),
                ));
            }
            Err(e) => return Err(self.guest_error(info, format!("waiting for the handshake: {e}"))),
        }
        info.log("connected to guest root shell");
        info.log(&format!(
            "(connecting took {:.2} seconds)",
            tic.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Forgets the running process after it exited or was killed (and the standby with it).
    fn clear(&self) {
        self.discard_standbys(false);
        self.shell.clear();
        let run = self.running.lock().unwrap().take();
        if let Some(run) = run {
            *self.last_process.lock().unwrap() = Some(run.process.clone());
            // Whatever is left of the start script's group may hold the console open.
            run.process.kill();
            if let Some(reader) = run.console_reader.lock().unwrap().take() {
                let _ = reader.join();
            }
        }
    }

    /// Marks the shell as needing a new handshake (after a reboot).
    pub fn disconnect(&self) {
        self.shell.disconnect();
    }

    /// The paths of the monitor, QMP and shell sockets of the running QEMU (in the state
    /// directory, or in the directory of the warm standby that took over), else of the next.
    pub fn socket_paths(&self, info: &MachineInfo) -> [PathBuf; 3] {
        let dir = self
            .running
            .lock()
            .unwrap()
            .as_ref()
            .map_or_else(|| info.state_dir.clone(), |r| r.dir.clone());
        [MONITOR_SOCKET, QMP_SOCKET, SHELL_SOCKET].map(|n| dir.join(n))
    }
}

impl Backend for QemuBackend {
    fn kind(&self) -> MachineKind {
        MachineKind::Qemu
    }

    fn start_command(&self) -> &str {
        &self.start_command
    }

    fn process(&self) -> Option<Arc<ChildProcess>> {
        match &*self.running.lock().unwrap() {
            Some(run) => Some(run.process.clone()),
            None => self.last_process.lock().unwrap().clone(),
        }
    }

    fn start(&self, info: &MachineInfo, allow_reboot: bool) -> Result<()> {
        if self.is_booted() {
            return Ok(());
        }
        self.do_start(info, allow_reboot)
    }

    fn connect(&self, info: &MachineInfo) -> Result<()> {
        if self.is_connected() {
            return Ok(());
        }
        let block = info
            .logger
            .nested("waiting for the VM to finish booting", Some(&info.name));
        self.start(info, false)?;
        self.handshake(info)?;
        block.finish();
        Ok(())
    }

    fn is_booted(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    fn is_connected(&self) -> bool {
        self.shell.is_connected()
    }

    fn pid(&self) -> Option<u32> {
        self.running
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.process.pid())
    }

    fn execute(
        &self,
        info: &MachineInfo,
        command: &str,
        timeout: Option<Duration>,
        reply: Reply,
        deadline: Deadline,
    ) -> Result<(i32, Vec<u8>)> {
        self.shell.execute(
            info,
            &self.console,
            command,
            timeout,
            reply,
            deadline,
            &|| self.exit_note(),
        )
    }

    fn shutdown(&self, info: &MachineInfo) -> Result<()> {
        if !self.is_booted() {
            return Ok(());
        }
        self.shell.send_raw(info, &self.console, b"poweroff\n")?;
        self.wait_for_shutdown(info)
    }

    fn wait_for_shutdown(&self, info: &MachineInfo) -> Result<()> {
        let Some(run) = self.running.lock().unwrap().clone() else {
            return Ok(());
        };
        let block = info
            .logger
            .nested("waiting for the VM to power off", Some(&info.name));
        loop {
            if run.process.wait(Deadline::NEVER).is_some() {
                break;
            }
            interrupt::check()?;
        }
        self.clear();
        block.finish();
        Ok(())
    }

    fn release(&self, info: &MachineInfo) {
        let Some(run) = self.running.lock().unwrap().clone() else {
            return;
        };
        info.logger.log(
            &format!("kill QemuMachine (pid {})", run.process.pid()),
            None,
        );
        run.process.kill();
        self.discard_standbys(true);
        self.clear();
    }

    fn console(&self) -> &Arc<Console> {
        &self.console
    }

    fn shell(&self) -> &ShellSlot {
        &self.shell
    }

    fn as_qemu(&self) -> Option<&QemuBackend> {
        Some(self)
    }
}
