//! The systemd-nspawn backend, compatible with upstream's `NspawnMachine`.
//!
//! The start script (`run-<name>-nspawn`) runs with only `RUN_NSPAWN_ROOT_DIR`,
//! `RUN_NSPAWN_SHARED_DIR` (and the VLANs' `QEMU_VDE_SOCKET_<n>`) in its environment and prints `systemd-nspawn's PID is N`; its
//! stdout is the container's console. Commands run in the container's namespaces like
//! upstream's `nsenter ... sh -c "set -eo pipefail; source /etc/profile; set -u; CMD"` with
//! an empty environment, but through one persistent `nsenter` bash per container instead of a
//! new `nsenter` per command.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::MachineKind;
use crate::console::Console;
use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::machine::{Backend, Machine, MachineInfo};
use crate::process::{self, ChildProcess};
use crate::transport::shell::{Reply, Shell, ShellError, CONTAINER_PREAMBLE, CONTAINER_SETUP};
use crate::transport::slot::{guest_error, ShellSlot};

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

struct Running {
    process: Arc<ChildProcess>,
    announced: Arc<Announced>,
    /// The container's PID 1, once found.
    init: Mutex<Option<u32>>,
    console_reader: Mutex<Option<JoinHandle<()>>>,
    /// The persistent `nsenter` bash, once connected.
    shell_process: Mutex<Option<ChildProcess>>,
}

/// A systemd-nspawn container.
pub struct NspawnBackend {
    start_script: String,
    console: Arc<Console>,
    running: Mutex<Option<Arc<Running>>>,
    shell: ShellSlot,
    started_at: Mutex<Option<Instant>>,
}

impl NspawnBackend {
    /// A container started by `start_script`.
    pub fn new(start_script: impl Into<String>) -> Self {
        NspawnBackend {
            start_script: start_script.into(),
            console: Arc::default(),
            running: Mutex::new(None),
            shell: ShellSlot::default(),
            started_at: Mutex::new(None),
        }
    }

    fn running(&self) -> Option<Arc<Running>> {
        self.running.lock().unwrap().clone()
    }

    fn exit_note(&self) -> String {
        match self.running().and_then(|r| {
            r.process
                .wait(Deadline::after(Some(Duration::from_secs(2))))
        }) {
            Some(status) => format!(" (systemd-nspawn {status})"),
            None => String::new(),
        }
    }

    /// Waits for the start script's `systemd-nspawn's PID is N`.
    fn nspawn_pid(&self, info: &MachineInfo, run: &Running) -> Result<u32> {
        let deadline = Deadline::after(Some(PID_TIMEOUT));
        let mut pid = run.announced.pid.lock().unwrap();
        loop {
            if let Some(p) = *pid {
                return Ok(p);
            }
            if let Some(status) = run.process.exit_status() {
                drop(pid);
                std::thread::sleep(Duration::from_millis(50));
                return Err(guest_error(
                    info,
                    &self.console,
                    format!(
                        "start script `{}` exited ({status}) before printing `{PID_LINE}N`",
                        self.start_script
                    ),
                ));
            }
            interrupt::check()?;
            if deadline.expired() {
                return Err(guest_error(
                    info,
                    &self.console,
                    format!(
                        "start script `{}` did not print `{PID_LINE}N` within {} s",
                        self.start_script,
                        PID_TIMEOUT.as_secs()
                    ),
                ));
            }
            pid = run
                .announced
                .changed
                .wait_timeout(pid, deadline.slice())
                .unwrap()
                .0;
        }
    }

    /// The container's PID 1: the child of systemd-nspawn in another PID namespace, once it has
    /// exec'd the container's init (nspawn's short-lived helper children share nspawn's), or,
    /// as upstream assumes, its single child once that has stayed the same for a moment.
    fn container_init(&self, info: &MachineInfo, run: &Running, deadline: Deadline) -> Result<u32> {
        let nspawn = self.nspawn_pid(info, run)?;
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
            let in_container = pids.iter().find(|p| {
                let ns = std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
                ns.is_some() && own_ns.is_some() && ns != own_ns
            });
            if let Some(&init) = in_container {
                // Until it execs the container's init, it is nspawn still setting up the
                // container's mounts and root: entering its namespaces then is too early.
                let exe = std::fs::read_link(format!("/proc/{init}/exe")).ok();
                if exe.is_some() && exe != own_exe {
                    return Ok(init);
                }
            }
            single = match (pids[..].first(), pids.len(), single) {
                _ if in_container.is_some() => None,
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
                let note = self.exit_note();
                return Err(guest_error(
                    info,
                    &self.console,
                    format!("the container stopped before it booted{note}"),
                ));
            }
            interrupt::check()?;
            if deadline.expired() {
                return Err(guest_error(
                    info,
                    &self.console,
                    format!("systemd-nspawn (pid {nspawn}) started no container init in time"),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Starts `nsenter` into the container with a bash on a socket pair and waits until it
    /// answers; retried while the container is still setting up its namespaces.
    fn open_shell(&self, info: &MachineInfo, run: &Running, deadline: Deadline) -> Result<()> {
        loop {
            let init = self.container_init(info, run, deadline)?;
            let (ours, theirs) = UnixStream::pair().map_err(|e| Error::io("socket pair", e))?;
            let stdout = theirs
                .try_clone()
                .map_err(|e| Error::io("socket pair", e))?;
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
                Error::Config(format!(
                    "cannot run `nsenter` for container `{}`: {e}",
                    info.name
                ))
            })?;
            if let Some(stderr) = process.take_stderr() {
                // Commands' stderr goes to the log, as a VM's goes to its serial console.
                drop(
                    self.console
                        .spawn_reader(stderr, info.name.clone(), info.logger.clone()),
                );
            }
            let shell = Shell::new(ours.try_clone().map_err(|e| Error::io("socket pair", e))?)
                .with_preamble(CONTAINER_PREAMBLE)
                .with_raw_output();
            self.shell.set(shell, &ours);
            let hello = format!("{CONTAINER_SETUP}echo 'Spawning backdoor root shell...'\n");
            self.shell.send_raw(info, &self.console, hello.as_bytes())?;
            match self.shell.handshake(deadline, &mut || !deadline.expired()) {
                Ok(()) => {
                    *run.shell_process.lock().unwrap() = Some(process);
                    *run.init.lock().unwrap() = Some(init);
                    return Ok(());
                }
                Err(ShellError::Interrupted) => return Err(Error::Interrupted),
                Err(ShellError::Disconnected) if !deadline.expired() => {
                    // nsenter failed (the container is still being set up): try again.
                    process.kill();
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    process.kill();
                    return Err(guest_error(
                        info,
                        &self.console,
                        format!("no shell in the container: {e}"),
                    ));
                }
            }
        }
    }

    fn clear(&self) {
        self.shell.clear();
        if let Some(run) = self.running.lock().unwrap().take() {
            if let Some(shell) = run.shell_process.lock().unwrap().take() {
                shell.kill();
            }
            // Whatever is left of the start script's group may hold the console open.
            run.process.kill();
            if let Some(reader) = run.console_reader.lock().unwrap().take() {
                let _ = reader.join();
            }
        }
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

    fn process(&self) -> Option<Arc<ChildProcess>> {
        self.running().map(|r| r.process.clone())
    }

    fn start(&self, info: &MachineInfo, _allow_reboot: bool) -> Result<()> {
        if self.is_booted() {
            return Ok(());
        }
        // SAFETY: plain getter.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(Error::Config(format!(
                "systemd-nspawn requires root to work. You are {uid} (container `{}`)",
                info.name
            )));
        }
        std::fs::create_dir_all(&info.shared_dir)
            .map_err(|e| Error::io(format!("creating {}", info.shared_dir.display()), e))?;
        self.console.reset();
        *self.started_at.lock().unwrap() = Some(Instant::now());
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
        let announced = Arc::new(Announced::default());
        let seen = announced.clone();
        let reader = self.console.spawn_reader_with(
            stdout,
            info.name.clone(),
            info.logger.clone(),
            move |line| {
                if let Some(pid) = parse_pid_line(line) {
                    *seen.pid.lock().unwrap() = Some(pid);
                    seen.changed.notify_all();
                }
            },
        );
        let run = Arc::new(Running {
            process: Arc::new(process),
            announced,
            init: Mutex::new(None),
            console_reader: Mutex::new(Some(reader)),
            shell_process: Mutex::new(None),
        });
        let pid = match self.nspawn_pid(info, &run) {
            Ok(pid) => pid,
            Err(e) => {
                run.process.kill();
                return Err(e);
            }
        };
        *self.running.lock().unwrap() = Some(run);
        info.log(&format!("systemd-nspawn running (pid {pid})"));
        if info.vnc {
            info.log("no display over VNC: a container has no screen");
        }
        Ok(())
    }

    fn connect(&self, info: &MachineInfo) -> Result<()> {
        if self.is_connected() {
            return Ok(());
        }
        let block = info.logger.nested(
            "waiting for the container to finish booting",
            Some(&info.name),
        );
        self.start(info, false)?;
        let run = self.running().ok_or_else(|| Error::InvalidState {
            machine: info.name.clone(),
            message: "the container is not running".to_string(),
        })?;
        let started = self.started_at.lock().unwrap().unwrap_or_else(Instant::now);
        let deadline = info.boot_deadline(started);
        let tic = Instant::now();
        self.open_shell(info, &run, deadline)?;
        info.log("connected to the container's root shell");
        info.log(&format!(
            "(connecting took {:.2} seconds)",
            tic.elapsed().as_secs_f64()
        ));
        block.finish();
        Ok(())
    }

    fn is_booted(&self) -> bool {
        self.running().is_some_and(|r| r.process.is_running())
    }

    fn is_connected(&self) -> bool {
        self.shell.is_connected()
    }

    fn pid(&self) -> Option<u32> {
        self.running().map(|r| r.process.pid())
    }

    fn execute(
        &self,
        info: &MachineInfo,
        command: &str,
        timeout: Option<Duration>,
        reply: Reply,
        deadline: Deadline,
    ) -> Result<(i32, Vec<u8>)> {
        if !self.is_booted() {
            self.shell.disconnect();
            let note = self.exit_note();
            return Err(guest_error(
                info,
                &self.console,
                format!("cannot run `{command}`: the container stopped{note}"),
            ));
        }
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
        if self.is_connected() {
            self.execute(
                info,
                "systemctl poweroff",
                None,
                Reply::Nothing,
                Deadline::NEVER,
            )?;
        } else if let Some(run) = self.running() {
            // systemd-nspawn turns SIGTERM into a clean poweroff of the container.
            run.process.signal_group(libc::SIGTERM);
        }
        self.wait_for_shutdown(info)
    }

    fn wait_for_shutdown(&self, info: &MachineInfo) -> Result<()> {
        let Some(run) = self.running() else {
            return Ok(());
        };
        let block = info
            .logger
            .nested("waiting for the container to power off", Some(&info.name));
        while run.process.wait(Deadline::NEVER).is_none() {
            interrupt::check()?;
        }
        self.clear();
        block.finish();
        Ok(())
    }

    fn release(&self, info: &MachineInfo) {
        let Some(run) = self.running() else {
            return;
        };
        info.logger.log(
            &format!("kill NspawnMachine (pid {})", run.process.pid()),
            None,
        );
        // The container's PID 1 runs in its own session, out of reach of the group kill:
        // kill it too, which ends its whole PID namespace.
        let nspawn = *run.announced.pid.lock().unwrap();
        let inits: Vec<i32> = nspawn
            .map(|n| {
                std::fs::read_to_string(format!("/proc/{n}/task/{n}/children")).unwrap_or_default()
            })
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        run.process.kill();
        for pid in inits {
            // SAFETY: signalling a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.clear();
    }

    fn console(&self) -> &Arc<Console> {
        &self.console
    }

    fn shell(&self) -> &ShellSlot {
        &self.shell
    }

    fn as_nspawn(&self) -> Option<&NspawnBackend> {
        Some(self)
    }
}

impl NspawnBackend {
    /// The container's PID 1 once connected.
    fn init_pid(&self) -> Option<u32> {
        self.running().and_then(|r| *r.init.lock().unwrap())
    }
}

impl Machine {
    /// The pid (in the host's namespace) of the container's PID 1, systemd: upstream's
    /// `NspawnMachine.get_systemd_process`. Starts the container and waits for it to boot
    /// when needed, as upstream's first command does.
    pub fn systemd_process(&self) -> Result<u32> {
        let nspawn = self.nspawn().ok_or_else(|| Error::InvalidState {
            machine: self.name().to_string(),
            message: "get_systemd_process needs a container".to_string(),
        })?;
        self.connect()?;
        nspawn.init_pid().ok_or_else(|| Error::InvalidState {
            machine: self.name().to_string(),
            message: "the container stopped".to_string(),
        })
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
