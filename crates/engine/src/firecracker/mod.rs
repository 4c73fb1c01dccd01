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

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{
    Backend, Host, LaunchOptions, Launched, Links, MachineInfo, MachineKind, Power, PowerOff,
    ShellSetup, Snapshots,
};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::process::{self, ChildProcess};
use crate::transport::connector::{ConnectError, Connector, HybridVsock};
use crate::transport::shell::VM_PREAMBLE;
use crate::transport::stream::Stream;
use crate::vmm::api_socket::{wait_for_socket, SocketWaitError};
use crate::vmm::tap::{self, Netns, Tap};
use crate::vmm::{Vmm, VmmSpec};

pub use api::{Api, Call, Nic, SnapshotFiles};

/// The API socket in the state directory.
pub const API_SOCKET: &str = "firecracker.sock";
/// The guest's hybrid vsock socket in the state directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The variable a start script gets with the machine's state directory.
pub const STATE_DIR_VAR: &str = "NIXOS_TEST_NG_STATE_DIR";
/// How long Firecracker may take to serve its API socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the start script may take to print the configuration.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a guest may take to reset after Ctrl-Alt-Delete (which ends Firecracker).
const RESET_TIMEOUT: Duration = Duration::from_secs(120);
/// The lines of Firecracker's stderr kept for error messages.
const STDERR_LINES: usize = 40;

/// What a machine forced to the backdoor is told.
pub const NO_BACKDOOR: &str = "firecracker machines have no console backdoor; their shell is the guest agent over vsock (unset NIXOS_TEST_NG_TRANSPORT, or set it to `agent`)";

/// The connector of the backdoor a Firecracker machine does not have: fails at once.
struct NoBackdoor;

impl Connector for NoBackdoor {
    fn connect(&mut self, _deadline: Deadline) -> std::result::Result<Stream, ConnectError> {
        Err(ConnectError::Guest(NO_BACKDOOR.to_string()))
    }

    fn describe(&self) -> String {
        "no console backdoor".to_string()
    }
}

/// The last lines a process wrote to its stderr, read by a thread.
#[derive(Clone, Default)]
struct StderrTail(Arc<Mutex<Vec<String>>>);

impl StderrTail {
    fn spawn(self, stderr: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut lines = self.0.lock().unwrap();
                lines.push(line);
                if lines.len() > STDERR_LINES {
                    lines.remove(0);
                }
            }
        })
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// One running Firecracker process.
pub(crate) struct Running {
    process: Arc<ChildProcess>,
    api: Api,
    /// Paused through the API (a snapshot in progress).
    paused: AtomicBool,
}

impl Running {
    /// Sends `call`; a failure says so when Firecracker has exited meanwhile.
    fn send(&self, call: &Call) -> Result<serde_json::Value> {
        self.api
            .send(call)
            .map_err(|e| with_exit_note(e, &self.process))
    }
}

/// How long a failed call waits for Firecracker's end, to say it exited.
const EXIT_NOTE_WAIT: Duration = Duration::from_millis(300);

/// `e` with "(Firecracker exited: <status>)" when `process` ended (or ends right away).
fn with_exit_note(e: Error, process: &ChildProcess) -> Error {
    match (e, process.wait(Deadline::after(Some(EXIT_NOTE_WAIT)))) {
        (
            Error::Guest {
                machine,
                message,
                console_tail,
            },
            Some(status),
        ) => Error::Guest {
            machine,
            message: format!("{message} (Firecracker exited: {status})"),
            console_tail,
        },
        (e, _) => e,
    }
}

/// The machine's VLAN NICs: they outlive a launch (a restored or rebooted microVM reopens
/// the same TAPs) and go when the machine is released.
struct Network {
    ns: Arc<Netns>,
    taps: Vec<Tap>,
}

/// How a launch brings up the microVM.
enum Boot<'a> {
    /// Configure it from the start script's configuration and start it.
    Fresh(&'a VmmSpec),
    /// Load it from a snapshot, resumed.
    Snapshot(&'a SnapshotFiles),
}

/// Where the Firecracker binary comes from.
enum Binary {
    /// `NIXOS_TEST_NG_FIRECRACKER`, else PATH ([`Vmm::binary`]), at each launch.
    Lookup,
    /// This one (tests).
    #[cfg(test)]
    Fixed(std::path::PathBuf),
    /// Looked for on this PATH, without the variable (tests).
    #[cfg(test)]
    Search(String),
}

/// A Firecracker microVM.
pub struct FirecrackerBackend {
    start_command: String,
    binary: Binary,
    socket_timeout: Duration,
    running: Mutex<Option<Arc<Running>>>,
    network: Mutex<Option<Network>>,
}

impl FirecrackerBackend {
    /// A microVM configured by the start script `start_command`.
    pub fn new(start_command: impl Into<String>) -> Self {
        let mut start_command = start_command.into();
        if Path::new(&start_command).is_file() {
            if let Ok(abs) = std::path::absolute(&start_command) {
                start_command = abs.display().to_string();
            }
        }
        FirecrackerBackend {
            start_command,
            binary: Binary::Lookup,
            socket_timeout: SOCKET_TIMEOUT,
            running: Mutex::new(None),
            network: Mutex::new(None),
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
        let mut cmd = if Path::new(&self.start_command).is_file() {
            Command::new(&self.start_command)
        } else {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(&self.start_command);
            c
        };
        cmd.current_dir(&info.state_dir)
            .envs(crate::qemu::start_environment(
                &info.state_dir,
                &info.shared_dir,
            ))
            .envs(info.env.iter().map(|(k, v)| (k, v)))
            .env(STATE_DIR_VAR, &info.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let script = process::spawn(cmd).map_err(|e| {
            Error::Config(format!(
                "cannot run start script `{}` of machine `{}`: {e}",
                self.start_command, info.name
            ))
        })?;
        let mut stdout = script.take_stdout().expect("stdout is piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let stderr = StderrTail::default();
        let stderr_reader = stderr
            .clone()
            .spawn(script.take_stderr().expect("stderr is piped"));
        let status = match script.wait_until(Deadline::after(Some(SCRIPT_TIMEOUT))) {
            Ok(Some(status)) => status,
            Ok(None) => {
                script.kill();
                return Err(Error::Config(format!(
                    "start script `{}` of machine `{}` did not finish within {} s",
                    self.start_command,
                    info.name,
                    SCRIPT_TIMEOUT.as_secs()
                )));
            }
            Err(e) => {
                script.kill();
                return Err(e);
            }
        };
        // Whatever it left running must not hold the pipes open.
        script.kill();
        let output = reader.join().unwrap_or_default();
        let _ = stderr_reader.join();
        if !status.success() {
            return Err(Error::Config(format!(
                "start script `{}` of machine `{}` failed ({status}){}",
                self.start_command,
                info.name,
                with_output(&stderr.text())
            )));
        }
        VmmSpec::parse(&self.start_command, &output, &info.state_dir)
            .map_err(|e| Error::Config(format!("machine `{}`: {e}", info.name)))
    }

    /// The machine's VLAN NICs, made on first use.
    fn nics(&self, info: &MachineInfo, spec: &VmmSpec) -> Result<Vec<Nic>> {
        let mut network = self.network.lock().unwrap();
        let fits = network
            .as_ref()
            .is_some_and(|n| n.taps.iter().map(|t| t.vlan).eq(spec.vlans.iter().copied()));
        if !fits {
            *network = None;
            if !spec.vlans.is_empty() {
                let net_err =
                    |e: tap::TapError| Error::Config(format!("machine `{}`: {e}", info.name));
                tap::check(&spec.vlans, &info.env).map_err(net_err)?;
                let ns = Netns::shared().map_err(net_err)?;
                let taps = spec
                    .vlans
                    .iter()
                    .map(|&v| {
                        let switch = tap::switch_dir(&info.env, v).expect("checked");
                        tap::plug(&ns, v, info.node, &switch)
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(net_err)?;
                *network = Some(Network { ns, taps });
            }
        }
        Ok(network
            .as_ref()
            .map(|n| {
                n.taps
                    .iter()
                    .map(|t| Nic {
                        tap: t.name.clone(),
                        mac: t.mac.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Starts a Firecracker process and brings up the microVM as `boot` says.
    fn start_vmm(&self, host: &dyn Host, boot: Boot<'_>) -> Result<Launched> {
        let info = host.info();
        let binary = match &self.binary {
            Binary::Lookup => Vmm::Firecracker.binary()?,
            #[cfg(test)]
            Binary::Fixed(b) => b.clone(),
            #[cfg(test)]
            Binary::Search(path) => Vmm::Firecracker.binary_from(None, Some(path))?,
        };
        let nics = match boot {
            Boot::Fresh(spec) => self.nics(info, spec)?,
            Boot::Snapshot(_) => Vec::new(),
        };
        let socket = info.state_dir.join(API_SOCKET);
        let vsock = info.state_dir.join(VSOCK_SOCKET);
        // Firecracker refuses an API socket path that exists, and binds the vsock's anew.
        for stale in [&socket, &vsock] {
            let _ = std::fs::remove_file(stale);
        }
        let netns = self.network.lock().unwrap().as_ref().map(|n| n.ns.clone());
        let mut cmd = match &netns {
            Some(ns) => ns.command(&binary.display().to_string()),
            None => Command::new(&binary),
        };
        cmd.arg("--api-sock")
            .arg(&socket)
            .arg("--id")
            .arg(vm_id(&info.name))
            .current_dir(&info.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = process::spawn(cmd).map_err(|e| {
            Error::Config(format!(
                "cannot run {} for machine `{}`: {e}",
                binary.display(),
                info.name
            ))
        })?;
        let stdout = process.take_stdout().expect("stdout is piped");
        let reader = host
            .console()
            .spawn_reader(stdout, info.name.clone(), info.logger.clone());
        let stderr = StderrTail::default();
        let stderr_reader = stderr
            .clone()
            .spawn(process.take_stderr().expect("stderr is piped"));
        let api = Api::new(&socket, info.name.clone());
        let ready = wait_for_socket(&socket, &process, self.socket_timeout)
            .map_err(|e| match e {
                SocketWaitError::Interrupted => Error::Interrupted,
                SocketWaitError::Exited(_) => {
                    // Its last words are in its stderr, which ends with it.
                    let _ = stderr_reader.join();
                    host.guest_error(format!(
                        "{}: {e}{}",
                        binary.display(),
                        with_output(&stderr.text())
                    ))
                }
                SocketWaitError::TimedOut { .. } => host.guest_error(format!(
                    "{} started, but {e}{}",
                    binary.display(),
                    with_output(&stderr.text())
                )),
            })
            .and_then(|()| {
                match boot {
                    Boot::Fresh(spec) => api.send_all(&api::boot_calls(spec, &vsock, &nics)),
                    Boot::Snapshot(files) => api.send(&api::snapshot_load(files)).map(drop),
                }
                .map_err(|e| with_exit_note(e, &process))
            });
        if let Err(e) = ready {
            process.kill();
            let _ = reader.join();
            return Err(e);
        }
        let process = Arc::new(process);
        *self.running.lock().unwrap() = Some(Arc::new(Running {
            process: process.clone(),
            api,
            paused: AtomicBool::new(false),
        }));
        info.log(&format!("Firecracker running (pid {})", process.pid()));
        Ok(Launched {
            process,
            console_reader: reader,
            connector: Box::new(NoBackdoor),
            shell: ShellSetup {
                preamble: VM_PREAMBLE,
                raw_output: true,
                greeting: None,
                idle_hint: None,
                connected_line: "connected to the guest agent",
            },
            shell_in_step: None,
            agent: Some(Box::new(HybridVsock::new(
                vsock,
                agent_protocol::AGENT_PORT,
            ))),
        })
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

fn with_output(text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", text.trim_end())
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
            self.network.lock().unwrap().take();
        }
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
