//! The QEMU backend: a start script following the upstream `run-<name>-vm` contract,
//! the shell backdoor on a virtconsole, the HMP monitor and QMP.

pub mod boot_cache;
mod console_socket;
mod monitor;
mod ops;
mod qmp;
mod snapshot;
mod standby;
mod vnc;
mod vsock;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use monitor::Monitor;
pub use ops::char_to_key;
pub use qmp::Qmp;
use standby::Standbys;
pub use vnc::VncAddress;
pub use vsock::{CID_VAR, SNAPSHOTS_VAR, VHOST_USER_VAR};

use crate::backend::{
    self, Backend, Host, Keyboard, LaunchOptions, Launched, Links, MachineInfo, MachineKind,
    PortForwards, Power, PowerOff, Screen, SerialConsole, ShellSetup, Snapshots,
};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::process::{self, ChildProcess};
use crate::transport::connector::{accept_unix, ConnectError, Ready};

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

/// A running QEMU process (the machine owns it; a clone for the serial console) and its
/// control channels.
pub struct Running {
    process: Arc<ChildProcess>,
    control: Mutex<ControlState>,
    /// Its TMPDIR: the machine's state directory, or the directory of the standby it was.
    dir: PathBuf,
    /// The agent's vsock daemon when the QEMU has a vhost-user vsock device (it goes with
    /// the QEMU).
    vsock_daemon: Option<Arc<vsock::Daemon>>,
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
struct QemuCommand {
    start_command: String,
    dir: PathBuf,
    shared_dir: PathBuf,
    env: Vec<(String, String)>,
    allow_reboot: bool,
    /// `--vnc`: the display number from which QEMU looks for a free one.
    vnc_from: Option<u16>,
    /// The run uses the boot cache: [`boot_cache::DEVICE_ARGS`] are appended.
    boot_cache: bool,
    extra: Vec<String>,
}

impl QemuCommand {
    fn command(&self) -> Command {
        let mut args =
            QemuBackend::appended_args(&self.dir, self.allow_reboot, display_available());
        if let Some(first) = self.vnc_from {
            args.extend(vnc::args(first));
        }
        if self.boot_cache {
            args.extend(boot_cache::DEVICE_ARGS.iter().map(|a| a.to_string()));
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

/// Binds `dir/name` (replacing a stale socket).
fn listen_at(dir: &Path, name: &str) -> std::io::Result<UnixListener> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path)
}

/// A QEMU VM.
pub struct QemuBackend {
    start_command: String,
    running: Mutex<Option<Arc<Running>>>,
    /// What the running QEMU was started with (a standby gets the same).
    allow_reboot: AtomicBool,
    standbys: Standbys,
    /// Where the machine's display was last served (`--vnc`).
    vnc: Arc<Mutex<Option<VncAddress>>>,
    /// The password of the machine's display (`--vnc`), the same for every QEMU it runs.
    vnc_password: Arc<str>,
    /// The machine's number among the run's QEMU machines (its guest CID is 3 + this).
    index: u32,
    /// Its side of the boot cache.
    boot_cache: boot_cache::CacheState,
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
            running: Mutex::new(None),
            allow_reboot: AtomicBool::new(false),
            standbys: Standbys::default(),
            vnc: Arc::default(),
            vnc_password: vnc::new_password().into(),
            index: vsock::next_index(),
            boot_cache: Default::default(),
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
    fn command_for(&self, info: &MachineInfo, dir: &Path, allow_reboot: bool) -> QemuCommand {
        QemuCommand {
            start_command: self.start_command.clone(),
            dir: dir.to_path_buf(),
            shared_dir: info.shared_dir.clone(),
            env: info.env.clone(),
            allow_reboot,
            // the machine's previous display when it is still free
            vnc_from: info
                .vnc
                .then(|| self.vnc_address().map_or(0, |a| a.display())),
            boot_cache: info.boot_cache.is_some(),
            extra: Vec::new(),
        }
    }

    /// Where the machine's display is served over VNC (`--vnc`), once QEMU said so.
    pub fn vnc_address(&self) -> Option<VncAddress> {
        *self.vnc.lock().unwrap()
    }

    /// Waits until QEMU connects to the `what` socket; errors name the start script.
    fn accept(
        &self,
        host: &dyn Host,
        listener: &UnixListener,
        what: &str,
        process: &ChildProcess,
    ) -> Result<UnixStream> {
        let info = host.info();
        let exited = || process.exit_status();
        match accept_unix(listener, &exited, Deadline::after(Some(SOCKET_TIMEOUT))) {
            Ok(stream) => Ok(stream),
            Err(ConnectError::Interrupted) => Err(Error::Interrupted),
            Err(ConnectError::Exited(status)) => {
                // Let the console reader catch the last lines before reporting them.
                std::thread::sleep(Duration::from_millis(50));
                Err(host.guest_error(format!(
                    "start script `{}` exited ({status}) before QEMU connected to the {what} socket",
                    self.start_command
                )))
            }
            Err(ConnectError::TimedOut) => Err(host.guest_error(format!(
                "QEMU did not connect to the {what} socket within {} s",
                SOCKET_TIMEOUT.as_secs()
            ))),
            Err(ConnectError::Io { source, .. }) => Err(Error::io(
                format!("{}: accepting the {what} socket", info.name),
                source,
            )),
            Err(e) => Err(host.guest_error(format!("accepting the {what} socket: {e}"))),
        }
    }

    fn listen(info: &MachineInfo, name: &str) -> Result<(UnixListener, PathBuf)> {
        let path = info.state_dir.join(name);
        let l = listen_at(&info.state_dir, name)
            .map_err(|e| Error::io(format!("{}: binding {}", info.name, path.display()), e))?;
        Ok((l, path))
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

    /// Runs the start script with the driver's sockets appended, accepts QEMU's monitor and
    /// shell connections (the shell's stream is the virtconsole's: ready at once), and sets
    /// up the monitor and QMP in the background.
    fn launch(&self, host: &dyn Host, options: LaunchOptions) -> Result<Launched> {
        let info = host.info();
        info.log("starting vm");
        let (monitor_l, _) = Self::listen(info, MONITOR_SOCKET)?;
        let (shell_l, _) = Self::listen(info, SHELL_SOCKET)?;
        let qmp_path = info.state_dir.join(QMP_SOCKET);
        let _ = std::fs::remove_file(&qmp_path);
        crate::private::dir(&info.shared_dir)
            .map_err(|e| Error::io(format!("creating {}", info.shared_dir.display()), e))?;

        self.allow_reboot
            .store(options.allow_reboot, Ordering::SeqCst);
        // A previous QEMU's vsock daemon goes first: the new one's sockets have the same paths.
        drop(self.running.lock().unwrap().take());
        let plan = vsock::Plan::for_launch(info, &self.start_command, self.index);
        let with_vsock = !matches!(plan, vsock::Plan::None);
        if let Some(launched) = self.launch_from_cache(host, options.allow_reboot, with_vsock) {
            info.log(&format!("QEMU running (pid {})", launched.process.pid()));
            return Ok(launched);
        }
        let vsock = vsock::Attached::set_up(info, plan)?;
        let mut qemu = self.command_for(info, &info.state_dir, options.allow_reboot);
        qemu.env.extend(vsock.as_ref().map(|v| v.env.clone()));
        let cmd = qemu.command();
        let process = process::spawn(cmd).map_err(|e| {
            Error::Config(format!(
                "cannot run start script `{}` of machine `{}`: {e}",
                self.start_command, info.name
            ))
        })?;
        let stdout = process.take_stdout().expect("stdout is piped");
        let reader = host
            .console()
            .spawn_reader(stdout, info.name.clone(), info.logger.clone());

        let result = (|| {
            let monitor = self.accept(host, &monitor_l, "monitor", &process)?;
            let shell = self.accept(host, &shell_l, "shell", &process)?;
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
            let password = self.vnc_password.clone();
            move |qmp: &Qmp| match vnc::set_password(qmp, &password).and_then(|()| vnc::query(qmp))
            {
                Ok(address) => {
                    *slot.lock().unwrap() = Some(address);
                    logger.log(&address.announcement(), Some(&name));
                    logger.log(&vnc::password_line(&password), Some(&name));
                }
                Err(e) => logger.log(&format!("no display over VNC: {e}"), Some(&name)),
            }
        });
        let machine = info.name.clone();
        let control = std::thread::Builder::new()
            .name(format!("ntng-control-{}", info.name))
            .spawn(move || {
                let qmp = Qmp::connect(
                    &qmp_path,
                    &machine,
                    Deadline::after(Some(Duration::from_secs(60))),
                )?;
                if let Some(announce) = announce {
                    announce(&qmp);
                }
                let mut monitor = Monitor::new(monitor, &machine);
                monitor.wait_for_prompt(Deadline::after(Some(Duration::from_secs(120))))?;
                Ok(Control {
                    monitor: Mutex::new(monitor),
                    qmp,
                })
            })
            .expect("cannot start a control-channel thread");
        let process = Arc::new(process);
        *self.running.lock().unwrap() = Some(Arc::new(Running {
            process: process.clone(),
            control: Mutex::new(ControlState::Pending(control)),
            dir: info.state_dir.clone(),
            vsock_daemon: vsock.as_ref().and_then(|v| v.daemon.clone()),
        }));
        info.log(&format!("QEMU running (pid {pid})"));
        Ok(Launched {
            process,
            console_reader: reader,
            shell: ShellSetup::backdoor().paced_by(console_socket::enlarge(&shell)),
            connector: Box::new(Ready::new(shell)),
            shell_in_step: None,
            agent: vsock.map(|v| v.connector),
        })
    }

    fn power_off(&self) -> PowerOff {
        PowerOff::Raw(b"poweroff\n")
    }

    /// Forgets the QEMU that ran; its standby goes too, and at the end of the machine its
    /// golden copies.
    fn stopped(&self, released: bool) {
        self.discard_standbys(released);
        if released {
            self.boot_cache.finish();
        }
        self.running.lock().unwrap().take();
    }

    fn switches_root(&self) -> bool {
        true
    }

    fn snapshots(&self) -> Option<&dyn Snapshots> {
        Some(self)
    }

    fn monitor(&self) -> Option<&dyn backend::Monitor> {
        Some(self)
    }

    fn screen(&self) -> Option<&dyn Screen> {
        Some(self)
    }

    fn keyboard(&self) -> Option<&dyn Keyboard> {
        Some(self)
    }

    fn links(&self) -> Option<&dyn Links> {
        Some(self)
    }

    fn port_forwards(&self) -> Option<&dyn PortForwards> {
        Some(self)
    }

    fn power(&self) -> Option<&dyn Power> {
        Some(self)
    }

    fn serial_console(&self) -> Option<&dyn SerialConsole> {
        Some(self)
    }
}
