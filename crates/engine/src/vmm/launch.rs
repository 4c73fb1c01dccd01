//! Launching a VMM driven through its API: running the start script for the configuration,
//! starting the VMM (in its own process group, inside the run's network namespace when the
//! machine has VLAN NICs), its stdout as the machine's console, waiting for its API socket,
//! letting the backend configure it, and handing the machine the agent over hybrid vsock as
//! its shell (these VMMs have no console backdoor). What differs between VMMs (the command
//! line, the calls) comes from the backend.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Host, Launched, MachineInfo, ShellSetup};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::kind::MachineKind;
use crate::process::{self, ChildProcess};
use crate::transport::connector::{ConnectError, Connector, HybridVsock};
use crate::transport::shell::VM_PREAMBLE;
use crate::transport::stream::Stream;
use crate::vmm::api::{Api, Call};
use crate::vmm::api_socket::{wait_for_socket, SocketWaitError};
use crate::vmm::tap::Netns;
use crate::vmm::{Vmm, VmmSpec};

/// The guest's hybrid vsock socket in the state directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The variable a start script gets with the machine's state directory.
pub const STATE_DIR_VAR: &str = "NIXOS_TEST_NG_STATE_DIR";
/// How long a VMM may take to serve its API socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the start script may take to print the configuration.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The lines of a process's stderr kept for error messages.
const STDERR_LINES: usize = 40;
/// How long a failed call waits for the VMM's end, to say it exited.
const EXIT_NOTE_WAIT: Duration = Duration::from_millis(300);

/// What a machine of `kind` forced to the backdoor is told.
pub fn no_backdoor(kind: MachineKind) -> String {
    format!(
        "{} machines have no console backdoor; their shell is the guest agent over vsock \
         (unset NIXOS_TEST_NG_TRANSPORT, or set it to `agent`)",
        kind.name()
    )
}

/// The connector of the backdoor a VMM machine does not have: fails at once.
struct NoBackdoor(MachineKind);

impl Connector for NoBackdoor {
    fn connect(&mut self, _deadline: Deadline) -> std::result::Result<Stream, ConnectError> {
        Err(ConnectError::Guest(no_backdoor(self.0)))
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

fn with_output(text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", text.trim_end())
    }
}

/// A start command as given, made absolute when it is a file (the script runs in the
/// state directory).
pub fn absolute_start_command(start_command: impl Into<String>) -> String {
    let start_command = start_command.into();
    if Path::new(&start_command).is_file() {
        if let Ok(abs) = std::path::absolute(&start_command) {
            return abs.display().to_string();
        }
    }
    start_command
}

/// Runs the start script `start_command` and parses the configuration it printed.
pub fn run_script(start_command: &str, info: &MachineInfo) -> Result<VmmSpec> {
    let mut cmd = if Path::new(start_command).is_file() {
        Command::new(start_command)
    } else {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(start_command);
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
            "cannot run start script `{start_command}` of machine `{}`: {e}",
            info.name
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
                "start script `{start_command}` of machine `{}` did not finish within {} s",
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
            "start script `{start_command}` of machine `{}` failed ({status}){}",
            info.name,
            with_output(&stderr.text())
        )));
    }
    VmmSpec::parse(start_command, &output, &info.state_dir)
        .map_err(|e| Error::Config(format!("machine `{}`: {e}", info.name)))
}

/// Where the VMM binary comes from.
pub enum Binary {
    /// The VMM's variable, else PATH ([`Vmm::binary`]), at each launch.
    Lookup,
    /// This one (tests).
    #[cfg(test)]
    Fixed(PathBuf),
    /// Looked for on this PATH, without the variable (tests).
    #[cfg(test)]
    Search(String),
}

impl Binary {
    /// The binary of `vmm`.
    pub fn resolve(&self, vmm: Vmm) -> Result<PathBuf> {
        match self {
            Binary::Lookup => vmm.binary(),
            #[cfg(test)]
            Binary::Fixed(b) => Ok(b.clone()),
            #[cfg(test)]
            Binary::Search(path) => vmm.binary_from(None, Some(path)),
        }
    }
}

/// One running VMM process and its API.
pub struct Running {
    pub process: Arc<ChildProcess>,
    pub api: Api,
    /// Paused through the API (a snapshot in progress).
    pub paused: AtomicBool,
    vmm: Vmm,
}

impl Running {
    /// Sends `call`; a failure says so when the VMM has exited meanwhile.
    pub fn send(&self, call: &Call) -> Result<serde_json::Value> {
        self.api
            .send(call)
            .map_err(|e| with_exit_note(e, &self.process, self.vmm))
    }
}

/// `e` with "(<VMM> exited: <status>)" when `process` ended (or ends right away).
fn with_exit_note(e: Error, process: &ChildProcess, vmm: Vmm) -> Error {
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
            message: format!("{message} ({} exited: {status})", vmm.kind().backend_name()),
            console_tail,
        },
        (e, _) => e,
    }
}

/// How to start one VMM process.
pub struct VmmCommand<'a> {
    pub vmm: Vmm,
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its API socket.
    pub socket: PathBuf,
    /// How long it may take to serve the socket.
    pub socket_timeout: Duration,
    /// The run's network namespace, when the machine has VLAN NICs.
    pub netns: Option<Arc<Netns>>,
    /// Reads its error answers.
    pub fault: crate::vmm::api::FaultReader,
    /// Configures and starts the guest once the socket is served.
    pub configure: &'a dyn Fn(&Api) -> Result<()>,
}

/// Starts the VMM `command` says (the stale API and vsock sockets removed first), configures
/// it, and returns the launch (the agent over `<state>/vsock.sock` as the shell) with the
/// running process. A failure leaves nothing running.
pub fn start(host: &dyn Host, command: VmmCommand<'_>) -> Result<(Launched, Arc<Running>)> {
    let info = host.info();
    let VmmCommand {
        vmm,
        binary,
        args,
        socket,
        socket_timeout,
        netns,
        fault,
        configure,
    } = command;
    let vsock = info.state_dir.join(VSOCK_SOCKET);
    // A VMM may refuse an API socket path that exists, and binds the vsock's anew.
    for stale in [&socket, &vsock] {
        let _ = std::fs::remove_file(stale);
    }
    let mut cmd = match &netns {
        Some(ns) => ns.command(&binary.display().to_string()),
        None => Command::new(&binary),
    };
    cmd.args(&args)
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
    let backend_name = vmm.kind().backend_name();
    let api = Api::new(&socket, info.name.clone(), backend_name, fault);
    let ready = wait_for_socket(&socket, &process, socket_timeout)
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
        .and_then(|()| configure(&api).map_err(|e| with_exit_note(e, &process, vmm)));
    if let Err(e) = ready {
        process.kill();
        let _ = reader.join();
        return Err(e);
    }
    let process = Arc::new(process);
    let running = Arc::new(Running {
        process: process.clone(),
        api,
        paused: AtomicBool::new(false),
        vmm,
    });
    info.log(&format!("{backend_name} running (pid {})", process.pid()));
    let launched = Launched {
        process,
        console_reader: reader,
        connector: Box::new(NoBackdoor(vmm.kind())),
        shell: ShellSetup {
            preamble: VM_PREAMBLE,
            raw_output: true,
            greeting: None,
            idle_hint: None,
            connected_line: "connected to the guest agent",
            pace_chunk: crate::transport::shell::ACK_EVERY,
        },
        shell_in_step: None,
        agent: Some(Box::new(HybridVsock::new(
            vsock,
            agent_protocol::AGENT_PORT,
        ))),
    };
    Ok((launched, running))
}
