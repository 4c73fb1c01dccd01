//! The engine's test backend: a local bash plays the guest, serving the backdoor protocol on
//! a socket pair. It proves the seam: a backend is this folder, a [`MachineKind`] variant and
//! its arm in `Driver::build_machine`; the machine's lifecycle, shell and errors come for free.
//!
//! Its "start command" is bash run before the backdoor starts (`exit 3`: a guest that dies
//! while booting; `sleep 30`: one that never answers). The console is the guest's stderr.
//!
//! With [`FakeBackend::with_agent`] the guest also starts the real guest agent
//! (`nixos-test-ng-agent --listen unix:<state dir>/agent.sock`, see [`agent_bin`]) beside the
//! backdoor, and the launch sets `Launched.agent` to a unix-socket connector for it: the
//! machine's tests then run the same assertions over both sessions.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, Host, LaunchOptions, Launched, MachineKind, PowerOff, ShellSetup};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::process;
use crate::transport::connector::{ConnectError, ConnectUnix, Connector, Ready};
use crate::transport::stream::Stream;

/// Where the fake guest's agent binary is: `NIXOS_TEST_NG_AGENT_BIN` when set; else, in the
/// engine's tests, the workspace's `nixos-test-ng-agent`, built once per test process by
/// `cargo build -q -p nixos-test-ng-agent --target-dir target/test-agent` (a target directory
/// of its own, so the build never waits for the lock of the `cargo test` that runs it);
/// else `nixos-test-ng-agent` on `PATH`.
pub fn agent_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("NIXOS_TEST_NG_AGENT_BIN") {
        return bin.into();
    }
    #[cfg(test)]
    return built_agent();
    #[cfg(not(test))]
    std::path::PathBuf::from("nixos-test-ng-agent")
}

#[cfg(test)]
fn built_agent() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = root.join("target/test-agent");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "nixos-test-ng-agent", "--target-dir"])
            .arg(&target)
            .current_dir(&root)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("running cargo to build the agent");
        assert!(status.success(), "building nixos-test-ng-agent failed");
        target.join("debug/nixos-test-ng-agent")
    })
    .clone()
}

/// Where the fake guest's agent listens.
fn agent_socket(host: &dyn Host) -> std::path::PathBuf {
    host.info().state_dir.join("agent.sock")
}

/// What happened to a fake machine, for its tests.
#[derive(Default)]
pub struct Record {
    /// How many launches there were.
    pub launches: AtomicUsize,
    /// `Backend::stopped` calls, with their `released`.
    pub stops: Mutex<Vec<bool>>,
    /// Streams a reconnecting guest's connector handed out.
    pub connects: AtomicUsize,
    /// Streams it was told did not reach their handshake.
    pub abandoned: AtomicUsize,
    /// Saves for the boot cache (`FakeBackend::with_boot_cache`).
    pub boot_saves: AtomicUsize,
}

/// A machine whose guest is a local bash.
#[derive(Default)]
pub struct FakeBackend {
    before: String,
    restart_resets: bool,
    /// Each handshake gets a new bash (as a container's `nsenter` shell), the first of which
    /// dies before its handshake; the machine's process only holds the console.
    reconnecting: bool,
    /// The guest runs the agent beside the backdoor, and the launch sets it up.
    agent: bool,
    /// The launch sets up an agent connector to this socket, served by the test itself.
    agent_at: Option<std::path::PathBuf>,
    /// Every launch wants a save for the boot cache at its first handshake (the backend
    /// then has snapshots that save nothing).
    boot_cache: bool,
    /// The launch hands over a shell already in step (as a start from the boot cache does).
    in_step: bool,
    /// The launch wants one still (see `boot_cache`).
    boot_save_wanted: std::sync::atomic::AtomicBool,
    /// What happened to it.
    pub record: Arc<Record>,
}

impl FakeBackend {
    /// Starts the guest's bash, its stderr read as the machine's console, and counts the launch.
    fn spawn_guest(
        &self,
        host: &dyn Host,
        cmd: Command,
    ) -> Result<(process::ChildProcess, std::thread::JoinHandle<()>)> {
        let info = host.info();
        let process = process::spawn(cmd).map_err(|e| Error::io("starting bash", e))?;
        let stderr = process.take_stderr().expect("stderr is piped");
        let console_reader =
            host.console()
                .spawn_reader(stderr, info.name.clone(), info.logger.clone());
        self.record.launches.fetch_add(1, Ordering::SeqCst);
        Ok((process, console_reader))
    }

    /// A guest that runs `before` in bash, then the backdoor.
    pub fn new(before: impl Into<String>) -> Self {
        FakeBackend {
            before: before.into(),
            ..Default::default()
        }
    }

    /// A guest reached through a new shell process per handshake (see `reconnecting`).
    pub fn reconnecting(mut self) -> Self {
        self.reconnecting = true;
        self
    }

    /// A guest that runs the real agent beside the backdoor (see the module's docs).
    pub fn with_agent(mut self) -> Self {
        self.agent = true;
        self
    }

    /// A launch whose agent connector reaches `path`, where the test serves its own agent.
    pub fn with_agent_at(mut self, path: std::path::PathBuf) -> Self {
        self.agent_at = Some(path);
        self
    }

    /// A launch that resynchronises the shell itself and hands it over in step.
    pub fn in_step(mut self) -> Self {
        self.in_step = true;
        self
    }

    /// A guest that the boot cache wants saved at the first handshake of each launch.
    pub fn with_boot_cache(mut self) -> Self {
        self.boot_cache = true;
        self
    }

    /// A guest whose restart is its reset (as a container's): its snapshots are restarts.
    pub fn restart_resets(mut self) -> Self {
        self.restart_resets = true;
        self
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> MachineKind {
        MachineKind::Fake
    }

    fn start_command(&self) -> &str {
        &self.before
    }

    fn launch(&self, host: &dyn Host, _options: LaunchOptions) -> Result<Launched> {
        self.boot_save_wanted
            .store(self.boot_cache, Ordering::SeqCst);
        if self.reconnecting {
            return self.launch_reconnecting(host);
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| Error::io("socket pair", e))?;
        let stdout = theirs
            .try_clone()
            .map_err(|e| Error::io("socket pair", e))?;
        let agent = if self.agent {
            let socket = agent_socket(host);
            let _ = std::fs::remove_file(&socket);
            format!(
                "export NTNG_FAKE_GUEST=$$; {} --listen unix:{} & ",
                crate::transport::shell::shell_quote(&agent_bin().display().to_string()),
                crate::transport::shell::shell_quote(&socket.display().to_string())
            )
        } else {
            String::new()
        };
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "-c"])
            .arg(format!(
                "cd /tmp; {}\n{agent}echo 'fake console: booted' >&2; \
                 echo 'Spawning backdoor root shell...'; PS1= exec bash --norc",
                self.before
            ))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(stdout)))
            .stderr(Stdio::piped());
        let (process, console_reader) = self.spawn_guest(host, cmd)?;
        let shell_in_step = if self.in_step {
            let stream = ours.try_clone().map_err(|e| Error::io("socket pair", e))?;
            let mut shell = crate::transport::shell::Shell::new(stream);
            shell
                .resync(Deadline::after(Some(std::time::Duration::from_secs(30))))
                .map_err(|e| Error::InvalidState {
                    machine: host.info().name.clone(),
                    message: format!("resync: {e}"),
                })?;
            Some(shell)
        } else {
            None
        };
        Ok(Launched {
            process: Arc::new(process),
            console_reader,
            connector: Box::new(Ready::new(ours)),
            shell: ShellSetup::backdoor(),
            shell_in_step,
            agent: match (&self.agent_at, self.agent) {
                (Some(path), _) => Some(Box::new(ConnectUnix::new(path)) as Box<dyn Connector>),
                (None, true) => Some(Box::new(ConnectUnix::new(agent_socket(host))) as _),
                (None, false) => None,
            },
        })
    }

    fn power_off(&self) -> PowerOff {
        if self.reconnecting {
            return PowerOff::Command("true", libc::SIGTERM);
        }
        if self.agent {
            // the guest's bash ends itself, whether it reads this or the agent runs it
            return PowerOff::Raw(b"kill $NTNG_FAKE_GUEST\n");
        }
        PowerOff::Raw(b"exit\n")
    }

    fn stopped(&self, released: bool) {
        self.record.stops.lock().unwrap().push(released);
    }

    fn restart_resets(&self) -> bool {
        self.restart_resets
    }

    fn snapshots(&self) -> Option<&dyn crate::backend::Snapshots> {
        self.boot_cache.then_some(self as _)
    }
}

/// Snapshots that save nothing: only for the boot cache's order of operations.
impl crate::backend::Snapshots for FakeBackend {
    fn unmounts_shares(&self) -> bool {
        false
    }
    fn pause(&self, _info: &crate::backend::MachineInfo) -> Result<()> {
        Ok(())
    }
    fn resume(&self, _info: &crate::backend::MachineInfo) -> Result<()> {
        Ok(())
    }
    fn save(&self, _info: &crate::backend::MachineInfo, _name: &str) -> Result<()> {
        Ok(())
    }
    fn rewind(
        &self,
        _host: &dyn Host,
        _name: &str,
        _mounts: &[crate::backend::shares::Mount],
    ) -> Result<crate::backend::Rewind> {
        Ok(crate::backend::Rewind::InPlace)
    }
    fn boot_save_wanted(&self) -> bool {
        self.boot_save_wanted.load(Ordering::SeqCst)
    }
    fn save_boot(
        &self,
        _info: &crate::backend::MachineInfo,
        _mounts: &[crate::backend::shares::Mount],
    ) -> Result<()> {
        self.boot_save_wanted.store(false, Ordering::SeqCst);
        self.record.boot_saves.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl FakeBackend {
    fn launch_reconnecting(&self, host: &dyn Host) -> Result<Launched> {
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "-c"])
            .arg(format!(
                "{}\necho 'fake console: booted' >&2; exec sleep 600",
                self.before
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (process, console_reader) = self.spawn_guest(host, cmd)?;
        Ok(Launched {
            process: Arc::new(process),
            console_reader,
            connector: Box::new(Spawner {
                record: self.record.clone(),
                shell: None,
            }),
            shell: ShellSetup::backdoor(),
            shell_in_step: None,
            agent: None,
        })
    }
}

/// Starts a bash on a socket pair per connect; the first one exits before its handshake.
struct Spawner {
    record: Arc<Record>,
    shell: Option<process::ChildProcess>,
}

impl Connector for Spawner {
    fn connect(&mut self, _deadline: Deadline) -> std::result::Result<Stream, ConnectError> {
        let io = |e| ConnectError::Io {
            context: "a fake shell".to_string(),
            source: e,
        };
        let (ours, theirs) = UnixStream::pair().map_err(io)?;
        let stdout = theirs.try_clone().map_err(io)?;
        let attempt = self.record.connects.fetch_add(1, Ordering::SeqCst);
        let script = if attempt == 0 {
            "exit 0"
        } else {
            "echo 'Spawning backdoor root shell...'; PS1= exec bash --norc"
        };
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "-c", script])
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(stdout)))
            .stderr(Stdio::null());
        self.shell = Some(process::spawn(cmd).map_err(io)?);
        Ok(ours.into())
    }

    fn reconnects(&self) -> bool {
        true
    }

    fn abandon(&mut self) {
        self.record.abandoned.fetch_add(1, Ordering::SeqCst);
        if let Some(shell) = self.shell.take() {
            shell.kill();
        }
    }
}
