//! The systemd-nspawn backend, compatible with upstream's `NspawnMachine`.
//!
//! The start script (`run-<name>-nspawn`) runs with only `RUN_NSPAWN_ROOT_DIR`,
//! `RUN_NSPAWN_SHARED_DIR` (and the VLANs' `QEMU_VDE_SOCKET_<n>`) in its environment and prints `systemd-nspawn's PID is N`; its
//! stdout is the container's console. Commands run in the container's namespaces like
//! upstream's `nsenter ... sh -c "set -eo pipefail; source /etc/profile; set -u; CMD"` with
//! an empty environment, but through one persistent `nsenter` bash per container instead of a
//! new `nsenter` per command: the [`Nsenter`] connector yields that bash's socket pair.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{
    Backend, Container, Host, LaunchOptions, Launched, MachineKind, PowerOff, ShellSetup,
};
use crate::console::Console;
use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::log::Logger;
use crate::process::{self, ChildProcess};
use crate::transport::connector::{ConnectError, Connector};
use crate::transport::shell::{CONTAINER_PREAMBLE, CONTAINER_SETUP};
use crate::transport::stream::Stream;

/// The line the start script prints before it execs systemd-nspawn.
pub const PID_LINE: &str = "systemd-nspawn's PID is ";
/// How long the start script may take to print its PID line.
const PID_TIMEOUT: Duration = Duration::from_secs(60);

/// The pid from the start script's announcement, filled in by the console reader.
#[derive(Default)]
struct Announced {
    pid: Mutex<Option<u32>>,
    changed: Condvar,
}

/// One launch of the container.
struct Running {
    process: Arc<ChildProcess>,
    start_script: String,
    announced: Announced,
    /// The container's PID 1, once its shell is connected.
    init: Mutex<Option<u32>>,
    /// The persistent `nsenter` bash, once connected.
    shell_process: Mutex<Option<ChildProcess>>,
}

impl Running {
    fn exit_note(&self) -> String {
        match self
            .process
            .wait(Deadline::after(Some(Duration::from_secs(2))))
        {
            Some(status) => format!(" (systemd-nspawn {status})"),
            None => String::new(),
        }
    }

    /// Waits for the start script's `systemd-nspawn's PID is N`; the failure's message.
    fn nspawn_pid(&self) -> std::result::Result<u32, String> {
        let deadline = Deadline::after(Some(PID_TIMEOUT));
        let mut pid = self.announced.pid.lock().unwrap();
        loop {
            if let Some(p) = *pid {
                return Ok(p);
            }
            if let Some(status) = self.process.exit_status() {
                drop(pid);
                // Let the console reader catch the last lines before reporting them.
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "start script `{}` exited ({status}) before printing `{PID_LINE}N`",
                    self.start_script
                ));
            }
            if interrupt::check().is_err() {
                return Err("interrupted".to_string());
            }
            if deadline.expired() {
                return Err(format!(
                    "start script `{}` did not print `{PID_LINE}N` within {} s",
                    self.start_script,
                    PID_TIMEOUT.as_secs()
                ));
            }
            pid = self
                .announced
                .changed
                .wait_timeout(pid, deadline.slice())
                .unwrap()
                .0;
        }
    }

    /// Ends the `nsenter` shell and forgets the init it entered.
    fn drop_shell(&self) {
        if let Some(shell) = self.shell_process.lock().unwrap().take() {
            shell.kill();
        }
        *self.init.lock().unwrap() = None;
    }
}

/// A systemd-nspawn container.
pub struct NspawnBackend {
    start_script: String,
    running: Mutex<Option<Arc<Running>>>,
}

impl NspawnBackend {
    /// A container started by `start_script`.
    pub fn new(start_script: impl Into<String>) -> Self {
        NspawnBackend {
            start_script: start_script.into(),
            running: Mutex::new(None),
        }
    }

    fn running(&self) -> Option<Arc<Running>> {
        self.running.lock().unwrap().clone()
    }
}

/// Yields a bash in the container's namespaces (`nsenter` on a socket pair) once the
/// container's init runs; each handshake gets a new one.
struct Nsenter {
    run: Arc<Running>,
    machine: String,
    logger: Arc<Logger>,
    console: Arc<Console>,
}

impl Nsenter {
    /// The container's PID 1: the child of systemd-nspawn in another PID namespace, once it has
    /// exec'd the container's init (nspawn's short-lived helper children share nspawn's), or,
    /// as upstream assumes, its single child once that has stayed the same for a moment and
    /// runs a program other than nspawn's.
    fn container_init(&self, deadline: Deadline) -> Result<u32, ConnectError> {
        let run = &self.run;
        let nspawn = run.nspawn_pid().map_err(ConnectError::Guest)?;
        let own_ns = std::fs::read_link(format!("/proc/{nspawn}/ns/pid")).ok();
        let own_exe = std::fs::read_link(format!("/proc/{nspawn}/exe")).ok();
        let mut single: Option<(u32, Instant)> = None;
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                    .unwrap_or_default();
            let pids: Vec<u32> = children
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            // A child still running nspawn's own binary is nspawn setting up the container
            // (its outer child in the host's namespaces, or the inner one before it execs
            // the init): entering its namespaces would run commands on the host.
            let runs_another_program = |p: &u32| {
                let exe = std::fs::read_link(format!("/proc/{p}/exe")).ok();
                exe.is_some() && exe != own_exe
            };
            let in_container = pids.iter().find(|p| {
                let ns = std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
                ns.is_some() && own_ns.is_some() && ns != own_ns
            });
            if let Some(init) = in_container {
                if runs_another_program(init) {
                    return Ok(*init);
                }
            }
            single = match (pids[..].first(), pids.len(), single) {
                _ if in_container.is_some() => None,
                (Some(p), 1, _) if !runs_another_program(p) => None,
                (Some(&p), 1, Some((q, since))) if p == q => {
                    if since.elapsed() >= Duration::from_millis(200) {
                        return Ok(p);
                    }
                    Some((q, since))
                }
                (Some(&p), 1, _) => Some((p, Instant::now())),
                _ => None,
            };
            if run.process.exit_status().is_some() {
                let note = run.exit_note();
                return Err(ConnectError::Guest(format!(
                    "the container stopped before it booted{note}"
                )));
            }
            if interrupt::check().is_err() {
                return Err(ConnectError::Interrupted);
            }
            if deadline.expired() {
                return Err(ConnectError::Guest(format!(
                    "systemd-nspawn (pid {nspawn}) started no container init in time"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Connector for Nsenter {
    fn connect(&mut self, deadline: Deadline) -> std::result::Result<Stream, ConnectError> {
        let init = self.container_init(deadline)?;
        let pair = |e| ConnectError::Io {
            context: "socket pair".to_string(),
            source: e,
        };
        let (ours, theirs) = UnixStream::pair().map_err(pair)?;
        let stdout = theirs.try_clone().map_err(pair)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={init}"))
            .args([
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--cgroup",
                // A forking nsenter mirrors a stop of its child onto itself, and
                // systemd's final kill round stops everything: the container would wait
                // forever for a dead shell nobody reaps. With --no-fork the shell's
                // children (the commands) are still in the container's PID namespace.
                "--no-fork",
                "--",
            ])
            .args(["/usr/bin/env", "-i", "/bin/bash", "--norc"])
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(stdout)))
            .stderr(Stdio::piped());
        let process = process::spawn(cmd).map_err(|e| {
            ConnectError::Host(format!(
                "cannot run `nsenter` for container `{}`: {e}",
                self.machine
            ))
        })?;
        if let Some(stderr) = process.take_stderr() {
            // Commands' stderr goes to the log, as a VM's goes to its serial console.
            drop(
                self.console
                    .spawn_reader(stderr, self.machine.clone(), self.logger.clone()),
            );
        }
        self.run.drop_shell();
        *self.run.shell_process.lock().unwrap() = Some(process);
        *self.run.init.lock().unwrap() = Some(init);
        Ok(ours.into())
    }

    fn reconnects(&self) -> bool {
        true
    }

    /// The shell did not answer (the container is still being set up, or gone).
    fn abandon(&mut self) {
        self.run.drop_shell();
    }
}

fn parse_pid_line(line: &str) -> Option<u32> {
    line.trim().strip_prefix(PID_LINE)?.trim().parse().ok()
}

impl Backend for NspawnBackend {
    fn kind(&self) -> MachineKind {
        MachineKind::Nspawn
    }

    fn start_command(&self) -> &str {
        &self.start_script
    }

    fn launch(&self, host: &dyn Host, _options: LaunchOptions) -> Result<Launched> {
        let info = host.info();
        // SAFETY: plain getter.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(Error::Config(format!(
                "systemd-nspawn requires root to work. You are {uid} (container `{}`)",
                info.name
            )));
        }
        crate::private::dir(&info.shared_dir)
            .map_err(|e| Error::io(format!("creating {}", info.shared_dir.display()), e))?;
        let mut cmd = Command::new(&self.start_script);
        // Upstream's two variables, plus the VLAN switches (`QEMU_VDE_SOCKET_<n>`), which our
        // container scripts plug into from the container's own network namespace.
        cmd.env_clear()
            .env("RUN_NSPAWN_ROOT_DIR", &info.state_dir)
            .env("RUN_NSPAWN_SHARED_DIR", &info.shared_dir)
            .envs(info.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&info.state_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let process = process::spawn(cmd).map_err(|e| {
            Error::Config(format!(
                "cannot run start script `{}` of container `{}`: {e}",
                self.start_script, info.name
            ))
        })?;
        let stdout = process.take_stdout().expect("stdout is piped");
        let run = Arc::new(Running {
            process: Arc::new(process),
            start_script: self.start_script.clone(),
            announced: Announced::default(),
            init: Mutex::new(None),
            shell_process: Mutex::new(None),
        });
        let seen = run.clone();
        let reader = host.console().spawn_reader_with(
            stdout,
            info.name.clone(),
            info.logger.clone(),
            move |line| {
                if let Some(pid) = parse_pid_line(line) {
                    *seen.announced.pid.lock().unwrap() = Some(pid);
                    seen.announced.changed.notify_all();
                }
            },
        );
        let pid = match run.nspawn_pid() {
            Ok(pid) => pid,
            Err(message) => {
                run.process.kill();
                if interrupt::check().is_err() {
                    return Err(Error::Interrupted);
                }
                return Err(host.guest_error(message));
            }
        };
        *self.running.lock().unwrap() = Some(run.clone());
        info.log(&format!("systemd-nspawn running (pid {pid})"));
        if info.vnc {
            info.log("no display over VNC: a container has no screen");
        }
        Ok(Launched {
            process: run.process.clone(),
            console_reader: reader,
            connector: Box::new(Nsenter {
                run,
                machine: info.name.clone(),
                logger: info.logger.clone(),
                console: host.console().clone(),
            }),
            shell: ShellSetup {
                preamble: CONTAINER_PREAMBLE,
                raw_output: true,
                greeting: Some(format!(
                    "{CONTAINER_SETUP}echo 'Spawning backdoor root shell...'\n"
                )),
                idle_hint: None,
                connected_line: "connected to the container's root shell",
                pace_chunk: crate::transport::shell::ACK_EVERY,
            },
            shell_in_step: None,
            agent: None,
        })
    }

    /// `systemctl poweroff` in the container; before its shell is up, SIGTERM, which
    /// systemd-nspawn turns into a clean poweroff of the container.
    fn power_off(&self) -> PowerOff {
        PowerOff::Command("systemctl poweroff", libc::SIGTERM)
    }

    /// The container's PID 1 runs in its own session, out of reach of the group kill: it is
    /// killed too, which ends its whole PID namespace.
    fn kill(&self, _host: &dyn Host, process: &ChildProcess) {
        let nspawn = self
            .running()
            .and_then(|r| *r.announced.pid.lock().unwrap());
        let inits: Vec<i32> = nspawn
            .map(|n| {
                std::fs::read_to_string(format!("/proc/{n}/task/{n}/children")).unwrap_or_default()
            })
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        process.kill();
        for pid in inits {
            // SAFETY: signalling a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn stopped(&self, _released: bool) {
        if let Some(run) = self.running.lock().unwrap().take() {
            run.drop_shell();
        }
    }

    /// It runs on a fresh tmpfs overlay: a restart brings back the state right after boot.
    fn restart_resets(&self) -> bool {
        true
    }

    fn container(&self) -> Option<&dyn Container> {
        Some(self)
    }
}

impl Container for NspawnBackend {
    fn init_pid(&self) -> Option<u32> {
        self.running().and_then(|r| *r.init.lock().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pid_line;

    #[test]
    fn pid_line() {
        assert_eq!(parse_pid_line("systemd-nspawn's PID is 1234"), Some(1234));
        assert_eq!(parse_pid_line("systemd-nspawn's PID is x"), None);
        assert_eq!(parse_pid_line("Welcome"), None);
    }
}
