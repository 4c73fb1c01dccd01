//! The guest agent's vsock device of a QEMU VM.
//!
//! A start script announces that it can take the device by naming one of the variables in
//! its text: [`VHOST_USER_VAR`] (vhost-user, served by a `vhost-device-vsock` daemon that the
//! driver starts per VM) or [`CID_VAR`] (the kernel's vhost-vsock, reached with `AF_VSOCK`;
//! used only when the host has `/dev/vhost-vsock`). The driver sets the variable in the
//! script's environment and the script adds the device; unset, there is no device and the
//! machine uses the backdoor. `NIXOS_TEST_NG_TRANSPORT=backdoor` never sets it.
//!
//! The daemon is a child of the driver (its own process group, killed with the driver), has
//! its sockets in the machine's state directory and lives as long as the QEMU it serves.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol::AGENT_PORT;

use crate::backend::MachineInfo;
use crate::config::{Transport, TRANSPORT_VAR};
use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::process::{self, ChildProcess};
use crate::transport::connector::{ConnectError, Connector, HybridVsock, Vsock};
use crate::transport::stream::Stream;

/// Named in a start script: it takes a vhost-user vsock device on the socket in this variable.
pub const VHOST_USER_VAR: &str = "NIXOS_TEST_NG_VHOST_USER_VSOCK";
/// Named in a start script: it takes a kernel vhost-vsock device with the CID in this variable.
pub const CID_VAR: &str = "NIXOS_TEST_NG_VSOCK_CID";
/// Set (to `1`) when the run takes snapshots (the pytest plugin's isolation sets it): with the
/// transport unset, VMs then get no vhost-user vsock device, which QEMU cannot save.
pub const SNAPSHOTS_VAR: &str = "NIXOS_TEST_NG_SNAPSHOTS";
/// The vhost-user vsock daemon (rust-vmm's vhost-device-vsock).
pub const DAEMON: &str = "vhost-device-vsock";
/// Overrides the daemon's path (tests; a daemon outside PATH).
pub const DAEMON_VAR: &str = "NIXOS_TEST_NG_VHOST_DEVICE_VSOCK";
/// The daemon's vhost-user socket (QEMU connects) in the state directory:
/// `vhost-user-vsock-<launch>.sock`.
pub const VHOST_USER_SOCKET: &str = "vhost-user-vsock";
/// The daemon's hybrid-vsock socket (the driver connects, `CONNECT <port>`):
/// `vsock-<launch>.sock`.
pub const UDS_SOCKET: &str = "vsock";
/// The host's kernel vhost-vsock device.
const VHOST_VSOCK_DEV: &str = "/dev/vhost-vsock";
/// How long the daemon may take to create its socket.
const DAEMON_START: Duration = Duration::from_secs(10);
/// Lines of the daemon's output kept for error messages.
const OUTPUT_LINES: usize = 20;
/// The why and the fix of a refused snapshot of a VM with a vhost-user vsock device.
pub const SNAPSHOT_REASON: &str = "the VM has a vhost-user vsock device (the guest agent's), \
    which QEMU cannot migrate or save";
/// See [`SNAPSHOT_REASON`].
pub const SNAPSHOT_FIX: &str = "run with NIXOS_TEST_NG_TRANSPORT=backdoor, or with \
    NIXOS_TEST_NG_SNAPSHOTS=1 and the transport unset (as the pytest plugin's isolation does): \
    the VM then starts without the vsock device and uses the backdoor";

/// Whether a VM gets the vhost-user device with the transport unset. No: QEMU cannot save
/// it (no snapshots, no warm standby), and vhost-device-vsock (even with our fix for its
/// start, `scripts/patches/`) does not reliably carry traffic after a guest reset or
/// `stop`/`cont`; `NIXOS_TEST_NG_TRANSPORT=agent` asks for it.
const VHOST_USER_BY_DEFAULT: bool = false;

/// Which devices a start script can take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Announcement {
    pub vhost_user: bool,
    pub cid: bool,
}

impl Announcement {
    /// What `start_command` announces: the text of the script it names, or the command line.
    pub fn of(start_command: &str) -> Announcement {
        let text = match std::fs::read(start_command) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => start_command.to_string(),
        };
        Announcement {
            vhost_user: text.contains(VHOST_USER_VAR),
            cid: text.contains(CID_VAR),
        }
    }
}

/// The device a launch gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// None: the backdoor.
    None,
    /// vhost-user with a `vhost-device-vsock` daemon (guest CID given).
    VhostUser { cid: u32 },
    /// The kernel's vhost-vsock with this host-unique CID.
    Kernel { cid: u32 },
}

impl Plan {
    /// The device for a machine whose script announced `announced`, numbered `index` in the
    /// run; `snapshots`: the run takes snapshots; `kernel_vsock`: the host has
    /// `/dev/vhost-vsock` (whose device QEMU can save).
    pub fn choose(
        transport: Transport,
        announced: Announcement,
        index: u32,
        snapshots: bool,
        kernel_vsock: bool,
    ) -> Plan {
        if transport == Transport::Backdoor {
            return Plan::None;
        }
        if announced.cid && kernel_vsock {
            Plan::Kernel {
                cid: host_unique_cid(std::process::id(), index),
            }
        } else if announced.vhost_user
            && (transport == Transport::Agent || (VHOST_USER_BY_DEFAULT && !snapshots))
        {
            Plan::VhostUser { cid: 3 + index }
        } else {
            Plan::None
        }
    }

    /// For a launch of `info`'s machine, started by `start_command`, numbered `index`.
    pub fn for_launch(info: &MachineInfo, start_command: &str, index: u32) -> Plan {
        // The boot cache saves VMs: a run with it on takes snapshots.
        let snapshots = std::env::var(SNAPSHOTS_VAR).is_ok_and(|v| !matches!(v.trim(), "" | "0"))
            || info.boot_cache.is_some();
        Plan::choose(
            info.transport,
            Announcement::of(start_command),
            index,
            snapshots,
            Path::new(VHOST_VSOCK_DEV).exists(),
        )
    }
}

/// A guest CID no other run on this host uses at the same time (kernel vhost-vsock CIDs are
/// host-wide): the driver's pid and the machine's index, above the reserved CIDs 0..=2.
pub fn host_unique_cid(pid: u32, index: u32) -> u32 {
    let n = (u64::from(pid) << 10 | u64::from(index & 0x3ff)) % (u64::from(u32::MAX) - 3);
    3 + n as u32
}

/// Numbers the QEMU machines of a run (guest CIDs are 3 + this).
pub fn next_index() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The last lines of the daemon's output.
#[derive(Default)]
struct Output(Mutex<Vec<String>>);

impl Output {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap();
        if lines.len() == OUTPUT_LINES {
            lines.remove(0);
        }
        lines.push(line);
    }

    fn text(&self) -> String {
        let lines = self.0.lock().unwrap();
        if lines.is_empty() {
            "(no output)".to_string()
        } else {
            lines.join("\n")
        }
    }

    /// True once the daemon reported a fatal error (0.3.0 then retries forever, logging).
    fn fatal(&self) -> bool {
        self.0.lock().unwrap().iter().any(|l| is_failure(l))
    }
}

/// A line of the daemon's output that says it failed: logged as it comes, since a failed
/// daemon leaves the machine's agent silent (a panic ends its worker thread, not the process).
fn is_failure(line: &str) -> bool {
    line.contains("ERROR") || line.contains("panicked")
}

/// A running `vhost-device-vsock` of one VM.
pub struct Daemon {
    process: Arc<ChildProcess>,
    output: Arc<Output>,
    program: String,
    /// The vhost-user socket (QEMU's side).
    pub socket: PathBuf,
    /// The hybrid-vsock socket (the driver's side).
    pub uds: PathBuf,
}

impl Daemon {
    /// The program: `$NIXOS_TEST_NG_VHOST_DEVICE_VSOCK`, else `vhost-device-vsock` on PATH.
    fn program() -> String {
        std::env::var(DAEMON_VAR)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DAEMON.to_string())
    }

    /// Starts the daemon of `info`'s machine with guest CID `cid` and waits for its socket.
    pub fn start(info: &MachineInfo, cid: u32) -> Result<Daemon> {
        Self::start_program(info, cid, Self::program())
    }

    /// The sockets of a launch. Each launch has its own: the daemon of the launch before
    /// may still be alive while the next one starts (it goes with its machine's old run), and
    /// 0.3.0 binds its sockets again when its QEMU goes, which must not take the new
    /// daemon's paths; nor may the old one's cleanup remove them.
    fn socket_paths(info: &MachineInfo) -> (PathBuf, PathBuf) {
        static LAUNCHES: AtomicU32 = AtomicU32::new(0);
        let launch = LAUNCHES.fetch_add(1, Ordering::Relaxed);
        (
            info.state_dir
                .join(format!("{VHOST_USER_SOCKET}-{launch}.sock")),
            info.state_dir.join(format!("{UDS_SOCKET}-{launch}.sock")),
        )
    }

    fn start_program(info: &MachineInfo, cid: u32, program: String) -> Result<Daemon> {
        let (socket, uds) = Self::socket_paths(info);
        for stale in [&socket, &uds] {
            let _ = std::fs::remove_file(stale);
        }
        let mut cmd = Command::new(&program);
        cmd.arg("--guest-cid")
            .arg(cid.to_string())
            .arg("--socket")
            .arg(&socket)
            .arg("--uds-path")
            .arg(&uds)
            .current_dir(&info.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let failed = |message: String| Error::Guest {
            machine: info.name.clone(),
            message,
            console_tail: Vec::new(),
        };
        let process = process::spawn(cmd).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    " (not installed? scripts/setup-system.sh installs it; `nixos-test-ng doctor` \
                     checks; or run with {TRANSPORT_VAR}=backdoor)"
                )
            } else {
                String::new()
            };
            failed(format!(
                "cannot start the vsock daemon `{program}` for the guest agent: {e}{hint}"
            ))
        })?;
        let output = Arc::new(Output::default());
        for pipe in [
            process
                .take_stdout()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            process
                .take_stderr()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            let (logger, name) = (info.logger.clone(), info.name.clone());
            std::thread::Builder::new()
                .name(format!("ntng-vsockd-{}", info.name))
                .spawn(move || {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        if is_failure(&line) {
                            logger.log(&format!("vsock daemon: {line}"), Some(&name));
                        }
                        output.push(line);
                    }
                })
                .expect("cannot start a reader thread");
        }
        let daemon = Daemon {
            process: Arc::new(process),
            output,
            program,
            socket,
            uds,
        };
        daemon.wait_ready(info)?;
        info.log(&format!(
            "vsock daemon {} running (pid {}, guest cid {cid}, {})",
            daemon.program,
            daemon.process.pid(),
            daemon.uds.display()
        ));
        Ok(daemon)
    }

    /// Waits until both sockets exist; the daemon's exit or fatal error is an error with its
    /// output (it is killed then).
    fn wait_ready(&self, info: &MachineInfo) -> Result<()> {
        let deadline = Deadline::after(Some(DAEMON_START));
        let failed = |why: String| {
            self.process.kill();
            Error::Guest {
                machine: info.name.clone(),
                message: format!(
                    "the vsock daemon `{}` for the guest agent {why}; its output:\n{}",
                    self.program,
                    self.output.text()
                ),
                console_tail: Vec::new(),
            }
        };
        loop {
            if let Some(status) = self.process.exit_status() {
                // let the readers catch its last lines
                std::thread::sleep(Duration::from_millis(50));
                return Err(failed(format!("exited at start ({status})")));
            }
            if self.output.fatal() {
                return Err(failed("failed at start".to_string()));
            }
            if self.socket.exists() && self.uds.exists() {
                return Ok(());
            }
            if interrupt::check().is_err() {
                self.process.kill();
                return Err(Error::Interrupted);
            }
            if deadline.expired() {
                return Err(failed(format!(
                    "did not create {} within {} s",
                    self.socket.display(),
                    DAEMON_START.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Why the daemon is gone, when it is.
    fn gone(&self) -> Option<String> {
        let status = self.process.exit_status()?;
        Some(format!(
            "the vsock daemon `{}` (pid {}) exited ({status}); its output:\n{}",
            self.program,
            self.process.pid(),
            self.output.text()
        ))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.uds);
    }
}

/// The hybrid-vsock connector to the agent through a daemon: fails at once, with the
/// daemon's output, when the daemon is gone (instead of retrying until the boot deadline).
pub struct DaemonConnector {
    inner: HybridVsock,
    daemon: Arc<Daemon>,
}

impl Connector for DaemonConnector {
    fn connect(&mut self, deadline: Deadline) -> std::result::Result<Stream, ConnectError> {
        // reported as the guest's failure: with the machine's name and its console's tail
        if let Some(why) = self.daemon.gone() {
            return Err(ConnectError::Guest(why));
        }
        match self.inner.connect(deadline) {
            Err(ConnectError::TimedOut) => match self.daemon.gone() {
                Some(why) => Err(ConnectError::Guest(why)),
                None => Err(ConnectError::TimedOut),
            },
            other => other,
        }
    }

    fn reconnects(&self) -> bool {
        true
    }

    /// vhost-device-vsock 0.3.0 does not reliably carry traffic once QEMU restarted the
    /// device's queues (a guest reset, or `stop`/`cont`), even with our fix.
    fn survives_guest_reset(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!(
            "hybrid vsock ({} {})",
            self.daemon.program,
            self.daemon.uds.display()
        )
    }
}

/// What a launch set up for the agent.
pub struct Attached {
    /// The variable and value for the start script.
    pub env: (String, String),
    /// The daemon (vhost-user), kept while the QEMU runs.
    pub daemon: Option<Arc<Daemon>>,
    /// How to reach the agent.
    pub connector: Box<dyn Connector>,
}

impl Attached {
    /// Sets up `plan` for `info`'s machine: `None` for [`Plan::None`].
    pub fn set_up(info: &MachineInfo, plan: Plan) -> Result<Option<Attached>> {
        match plan {
            Plan::None => Ok(None),
            Plan::Kernel { cid } => {
                info.log(&format!("guest agent over vhost-vsock (guest cid {cid})"));
                Ok(Some(Attached {
                    env: (CID_VAR.to_string(), cid.to_string()),
                    daemon: None,
                    connector: Box::new(Vsock::new(cid, AGENT_PORT)),
                }))
            }
            Plan::VhostUser { cid } => {
                let daemon = Arc::new(Daemon::start(info, cid)?);
                Ok(Some(Attached {
                    env: (
                        VHOST_USER_VAR.to_string(),
                        daemon.socket.display().to_string(),
                    ),
                    connector: Box::new(DaemonConnector {
                        inner: HybridVsock::new(&daemon.uds, AGENT_PORT),
                        daemon: daemon.clone(),
                    }),
                    daemon: Some(daemon),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A machine's facts in a fresh directory, and a fake daemon there running `body` (sh).
    fn fixture(tag: &str, body: &str) -> (MachineInfo, String) {
        let dir = std::env::temp_dir().join(format!("ntng-vsockd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("vm-state-box");
        std::fs::create_dir_all(&state).unwrap();
        let program = dir.join("fake-vhost-device-vsock");
        std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let info = MachineInfo {
            name: "box".to_string(),
            logger: Arc::new(crate::log::Logger::default()),
            state_dir: state,
            shared_dir: dir.join("shared"),
            out_dir: dir.clone(),
            boot_timeout: None,
            env: Vec::new(),
            vnc: false,
            transport: Transport::Auto,
            node: 1,
            boot_cache: None,
        };
        (info, program.display().to_string())
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn a_missing_daemon_names_the_machine_and_the_fix() {
        let (info, _) = fixture("missing", "");
        let e = Daemon::start_program(&info, 3, "/nonexistent/vhost-device-vsock".into())
            .err()
            .unwrap();
        let text = message(e);
        assert!(
            text.starts_with("box: cannot start the vsock daemon"),
            "{text}"
        );
        assert!(text.contains("scripts/setup-system.sh"), "{text}");
        assert!(text.contains("NIXOS_TEST_NG_TRANSPORT=backdoor"), "{text}");
    }

    #[test]
    fn a_daemon_that_exits_at_start_is_reported_with_its_output() {
        let (info, program) = fixture("exits", "echo \"bad option: $*\" >&2; exit 2");
        let text = message(Daemon::start_program(&info, 7, program).err().unwrap());
        assert!(text.starts_with("box: the vsock daemon"), "{text}");
        assert!(text.contains("exited at start"), "{text}");
        let socket = format!("{}/{VHOST_USER_SOCKET}-", info.state_dir.display());
        let uds = format!("{}/{UDS_SOCKET}-", info.state_dir.display());
        assert!(
            text.contains(&format!("bad option: --guest-cid 7 --socket {socket}")),
            "{text}"
        );
        assert!(text.contains(&format!(".sock --uds-path {uds}")), "{text}");
    }

    #[test]
    fn a_daemon_stuck_in_its_fatal_error_loop_is_killed_and_reported() {
        // vhost-device-vsock 0.3.0 logs a fatal error again and again instead of exiting
        let (info, program) = fixture(
            "fatal",
            "echo $$ >pid; while :; do echo '[ERROR vhost_device_vsock] Fatal error: cannot \
             create vhost-user listener' >&2; sleep 0.01; done",
        );
        let text = message(Daemon::start_program(&info, 3, program).err().unwrap());
        assert!(text.contains("failed at start"), "{text}");
        assert!(text.contains("Fatal error: cannot create"), "{text}");
        let pid = std::fs::read_to_string(info.state_dir.join("pid")).unwrap();
        let gone = Deadline::after(Some(Duration::from_secs(10)));
        while Path::new(&format!("/proc/{}", pid.trim())).exists() && !gone.expired() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists());
    }

    #[test]
    fn the_daemon_of_the_launch_before_never_touches_the_next_ones_sockets() {
        let (info, program) = fixture(
            "relaunch",
            "exec python3 -c 'import socket, sys, time\nfor p in (sys.argv[4], sys.argv[6]):\n    \
             s = socket.socket(socket.AF_UNIX); s.bind(p); s.listen(); globals()[p] = s\n\
             time.sleep(300)' \"$@\"",
        );
        let before = Daemon::start_program(&info, 3, program.clone()).unwrap();
        let next = Daemon::start_program(&info, 3, program).unwrap();
        assert_ne!(before.socket, next.socket);
        assert_ne!(before.uds, next.uds);
        // the old run goes after the next launch started: its cleanup leaves the new sockets
        drop(before);
        assert!(next.socket.exists() && next.uds.exists());
    }

    #[test]
    fn a_running_daemon_serves_until_dropped_and_its_death_fails_connects_at_once() {
        // the fake binds both sockets (python3: sh cannot), then serves nothing
        let (info, program) = fixture(
            "runs",
            "exec python3 -c 'import socket, sys, time\nfor p in (sys.argv[4], sys.argv[6]):\n    \
             s = socket.socket(socket.AF_UNIX); s.bind(p); s.listen(); globals()[p] = s\n\
             print(\"ready\", flush=True)\ntime.sleep(300)' \"$@\"",
        );
        let daemon = Arc::new(Daemon::start_program(&info, 3, program).unwrap());
        assert!(daemon.socket.exists() && daemon.uds.exists());
        let mut connector = DaemonConnector {
            inner: HybridVsock::new(&daemon.uds, AGENT_PORT),
            daemon: daemon.clone(),
        };
        daemon.process.kill();
        let e = connector
            .connect(Deadline::after(Some(Duration::from_secs(60))))
            .err()
            .unwrap();
        assert!(
            matches!(&e, ConnectError::Guest(text) if text.contains("exited") && text.contains("ready")),
            "{e:?}"
        );
        drop(connector);
        let (socket, uds) = (daemon.socket.clone(), daemon.uds.clone());
        drop(daemon);
        assert!(!socket.exists() && !uds.exists());
    }

    #[test]
    fn the_plan_follows_the_announcement_the_transport_and_the_host() {
        let both = Announcement {
            vhost_user: true,
            cid: true,
        };
        let user = Announcement {
            vhost_user: true,
            cid: false,
        };
        let cid = Announcement {
            vhost_user: false,
            cid: true,
        };
        let none = Announcement::default();
        use Transport::*;
        // vhost-user only when the agent is asked for (VHOST_USER_BY_DEFAULT)
        assert_eq!(Plan::choose(Auto, user, 0, false, true), Plan::None);
        assert_eq!(
            Plan::choose(Agent, user, 2, false, false),
            Plan::VhostUser { cid: 5 }
        );
        assert_eq!(Plan::choose(Backdoor, both, 0, false, true), Plan::None);
        assert_eq!(Plan::choose(Auto, none, 0, false, true), Plan::None);
        assert_eq!(Plan::choose(Auto, cid, 0, false, false), Plan::None);
        assert_eq!(Plan::choose(Auto, both, 1, false, false), Plan::None);
        // a run that takes snapshots: no vhost-user device unless the agent is forced
        assert_eq!(Plan::choose(Auto, user, 0, true, false), Plan::None);
        assert_eq!(
            Plan::choose(Agent, user, 0, true, false),
            Plan::VhostUser { cid: 3 }
        );
        assert!(matches!(
            Plan::choose(Auto, both, 0, true, true),
            Plan::Kernel { .. }
        ));
        let Plan::Kernel { cid: c } = Plan::choose(Auto, both, 1, false, true) else {
            panic!("the kernel device when the host has it")
        };
        assert_eq!(c, host_unique_cid(std::process::id(), 1));
    }

    #[test]
    fn kernel_cids_differ_per_run_and_machine_and_avoid_the_reserved_ones() {
        let a = host_unique_cid(4_194_304, 0);
        assert!(a > 2 && a != u32::MAX);
        assert_ne!(host_unique_cid(100, 0), host_unique_cid(101, 0));
        assert_ne!(host_unique_cid(100, 0), host_unique_cid(100, 1));
        assert!(host_unique_cid(0, 0) >= 3);
    }

    #[test]
    fn the_announcement_is_read_from_the_script_or_the_command_line() {
        let dir = std::env::temp_dir().join(format!("ntng-vsock-ann-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("run-box-vm");
        std::fs::write(&script, format!("#!/bin/sh\necho ${VHOST_USER_VAR}\n")).unwrap();
        let a = Announcement::of(script.to_str().unwrap());
        assert!(a.vhost_user && !a.cid);
        assert_eq!(
            Announcement::of(
                "qemu-system-x86_64 -device vhost-vsock-pci,guest-cid=$NIXOS_TEST_NG_VSOCK_CID"
            ),
            Announcement {
                vhost_user: false,
                cid: true
            }
        );
        assert_eq!(Announcement::of("qemu-kvm"), Announcement::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
