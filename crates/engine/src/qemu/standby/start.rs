//! Starting a standby: its QEMU paused at the snapshot on its own disk copy, its network held
//! by drop filters, warmed up, paused again; and its console, held back until it takes over.

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;

use super::disks::{copy_files, fresh_dir, writable_disks, Golden};
use crate::backend::shares::{mount_command, Mount};
use crate::console::{clean, for_each_piece, Console};
use crate::error::Error;
use crate::interrupt::Deadline;
use crate::log::Logger;
use crate::process::{self, ChildProcess};
use crate::qemu::{listen_at, Monitor, QemuCommand, Qmp};
use crate::transport::connector::{accept_unix, ConnectError};
use crate::transport::shell::{Reply, Shell};

/// How long a standby may take from its start to paused and warm.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);
/// Console lines of a standby kept for a failure message before it takes over.
const HELD_LINES: usize = 40;
/// The ids of the drop filters and their chardevs: `<prefix><netdev index>`.
const DROP_PREFIX: &str = "ntng-drop-";

/// A standby QEMU, paused at its snapshot, warm, its network held.
pub(super) struct Standby {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) process: ChildProcess,
    pub(super) shell: Shell,
    pub(super) socket: UnixStream,
    /// The shell's pacing chunk (`qemu::console_socket`).
    pub(super) pace_chunk: usize,
    pub(super) monitor: Monitor,
    pub(super) qmp: Qmp,
    pub(super) relay: Arc<Relay>,
    pub(super) relay_thread: JoinHandle<()>,
    pub(super) filters: Vec<String>,
    pub(super) snapshots: BTreeSet<String>,
}

impl Standby {
    /// Kills it and deletes its directory.
    pub(super) fn discard(self) {
        self.process.kill();
        let _ = self.relay_thread.join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops a standby being prepared: kills its QEMU once there is one.
#[derive(Default)]
pub(super) struct Abort {
    state: Mutex<(bool, Option<u32>)>,
}

impl Abort {
    pub(super) fn abort(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        if let Some(pgid) = s.1 {
            // SAFETY: plain syscall on the standby's own process group.
            unsafe {
                libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
            }
        }
    }

    pub(super) fn check(&self) -> std::result::Result<(), String> {
        if self.state.lock().unwrap().0 {
            Err("cancelled".to_string())
        } else {
            Ok(())
        }
    }

    /// Records the standby's process group, unless aborted already.
    pub(super) fn register(&self, process: &ChildProcess) -> std::result::Result<(), String> {
        let mut s = self.state.lock().unwrap();
        if s.0 {
            return Err("cancelled".to_string());
        }
        s.1 = Some(process.pid());
        Ok(())
    }

    pub(super) fn unregister(&self) {
        self.state.lock().unwrap().1 = None;
    }
}

/// The console of a standby: held back (the last lines, for failure messages) until it takes
/// over, then the machine's console and log.
pub(super) struct Relay {
    sink: Mutex<Sink>,
}

enum Sink {
    Held(VecDeque<String>),
    Machine {
        console: Arc<Console>,
        logger: Arc<Logger>,
        machine: String,
    },
}

impl Relay {
    pub(super) fn spawn(
        stream: impl Read + Send + 'static,
        machine: &str,
    ) -> (Arc<Relay>, JoinHandle<()>) {
        let relay = Arc::new(Relay {
            sink: Mutex::new(Sink::Held(VecDeque::new())),
        });
        let r = relay.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ntng-standby-console-{machine}"))
            .spawn(move || {
                for_each_piece(
                    stream,
                    |raw| {
                        let line = clean(raw);
                        match &mut *r.sink.lock().unwrap() {
                            Sink::Held(lines) => {
                                if lines.len() >= HELD_LINES {
                                    lines.pop_front();
                                }
                                lines.push_back(line);
                            }
                            Sink::Machine {
                                console,
                                logger,
                                machine,
                            } => {
                                logger.serial(machine, &line);
                                console.push_raw(raw, line);
                            }
                        }
                    },
                    || {
                        if let Sink::Machine { console, .. } = &*r.sink.lock().unwrap() {
                            console.flush();
                        }
                    },
                );
                if let Sink::Machine { console, .. } = &*r.sink.lock().unwrap() {
                    console.close();
                }
            })
            .expect("cannot start a console reader thread");
        (relay, handle)
    }

    pub(super) fn attach(&self, console: Arc<Console>, logger: Arc<Logger>, machine: String) {
        *self.sink.lock().unwrap() = Sink::Machine {
            console,
            logger,
            machine,
        };
    }

    pub(super) fn last_line(&self) -> Option<String> {
        match &*self.sink.lock().unwrap() {
            Sink::Held(lines) => lines.iter().rev().find(|l| !l.trim().is_empty()).cloned(),
            Sink::Machine { .. } => None,
        }
    }
}

/// The netdev ids in HMP's `info network` (the ` \ id: index=..,type=..` lines).
pub(super) fn netdevs(info_network: &str) -> Vec<String> {
    info_network
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("\\ ")?;
            let (id, attrs) = rest.split_once(": ")?;
            (!attrs.contains("type=nic")).then(|| id.trim().to_string())
        })
        .collect()
}

/// Everything a standby's preparation needs, owned (it runs in its own thread).
pub(super) struct Job {
    pub(super) launch: QemuCommand,
    pub(super) machine: String,
    pub(super) state_dir: PathBuf,
    pub(super) logger: Arc<Logger>,
    pub(super) name: String,
    pub(super) golden: Arc<Golden>,
    pub(super) mounts: Vec<Mount>,
    pub(super) abort: Arc<Abort>,
    /// The disks are in the launch's directory already (a start from the boot cache).
    pub(super) in_place: bool,
    /// After the warm-up, the guest's clock and random pool are refreshed (a start from the
    /// boot cache, whose guest state is from another time).
    pub(super) refresh: bool,
    /// How the guest's memory comes back (a start from the boot cache).
    pub(super) memory: crate::qemu::boot_cache::memory::Start,
}

impl Job {
    pub(super) fn log(&self, msg: &str) {
        self.logger.log(msg, Some(&self.machine));
    }

    /// Loads the device state of a start with mapped memory; makes the memory image of a
    /// start that loaded the snapshot into a shared file (a failure there only logged).
    fn restore_memory(&self, qmp: &Qmp, deadline: Deadline) -> std::result::Result<(), String> {
        use crate::qemu::boot_cache::memory;
        match &self.memory {
            memory::Start::Loadvm => Ok(()),
            memory::Start::Mapped { image, .. } => memory::load(qmp, image, deadline),
            memory::Start::Make {
                live_ram,
                entry_dir,
                ..
            } => {
                let tic = std::time::Instant::now();
                match memory::make(qmp, live_ram, entry_dir, deadline) {
                    Ok(()) => self.log(&format!(
                        "memory image of the boot cache entry made in {:.2} s",
                        tic.elapsed().as_secs_f64()
                    )),
                    Err(e) => self.log(&format!(
                        "no memory image made for the boot cache entry: {e}"
                    )),
                }
                Ok(())
            }
        }
    }

    /// Starts the standby and warms it up; the reason when that fails.
    pub(super) fn run(&self) -> std::result::Result<Standby, String> {
        let dir = &self.launch.dir;
        if !self.in_place {
            fresh_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        // The start script makes `$TMPDIR/xchg` and shares it; it stays the machine's one.
        let _ = std::fs::create_dir_all(self.state_dir.join("xchg"));
        let _ = std::os::unix::fs::symlink(self.state_dir.join("xchg"), dir.join("xchg"));
        if !self.in_place {
            copy_files(&self.golden.dir, dir, &self.golden.files)
                .map_err(|e| format!("copying the golden disks into {}: {e}", dir.display()))?;
        }
        self.abort.check()?;
        let listen = |name: &str| {
            listen_at(dir, name).map_err(|e| format!("binding {}/{name}: {e}", dir.display()))
        };
        let monitor_l = listen("monitor")?;
        let shell_l = listen("shell")?;
        let process = process::spawn(self.launch.command())
            .map_err(|e| format!("cannot run the start script: {e}"))?;
        let registered = self.abort.register(&process);
        let stdout = process.take_stdout().expect("stdout is piped");
        let (relay, relay_thread) = Relay::spawn(stdout, &self.machine);
        let started = registered.and_then(|()| self.connect(&process, &monitor_l, &shell_l));
        self.abort.unregister();
        let (monitor, qmp, socket, shell, filters) = match started {
            Ok(v) => v,
            Err(reason) => {
                process.kill();
                let _ = relay_thread.join();
                let tail = relay
                    .last_line()
                    .map(|l| format!(" (its console: {l})"))
                    .unwrap_or_default();
                return Err(format!("{reason}{tail}"));
            }
        };
        Ok(Standby {
            name: self.name.clone(),
            dir: dir.clone(),
            process,
            pace_chunk: shell.pace_chunk(),
            shell,
            socket,
            monitor,
            qmp,
            relay,
            relay_thread,
            filters,
            snapshots: self.golden.snapshots.clone(),
        })
    }

    #[allow(clippy::type_complexity)]
    fn connect(
        &self,
        process: &ChildProcess,
        monitor_l: &UnixListener,
        shell_l: &UnixListener,
    ) -> std::result::Result<(Monitor, Qmp, UnixStream, Shell, Vec<String>), String> {
        let deadline = Deadline::after(Some(PREPARE_TIMEOUT));
        let exited = || process.exit_status();
        let accept = |l, what: &str| {
            accept_unix(l, &exited, deadline).map_err(|e| match e {
                ConnectError::Exited(status) => {
                    format!("its QEMU exited ({status}) before connecting to the {what} socket")
                }
                ConnectError::TimedOut => format!("its QEMU never connected to the {what} socket"),
                ConnectError::Interrupted => "interrupted".to_string(),
                e => format!("accepting its {what} socket: {e}"),
            })
        };
        let monitor = accept(monitor_l, "monitor")?;
        let socket = accept(shell_l, "shell")?;
        fn e(what: &'static str) -> impl Fn(Error) -> String {
            move |err| format!("{what}: {err}")
        }
        let qmp = Qmp::connect(&self.launch.dir.join("qmp"), &self.machine, deadline)
            .map_err(e("QMP"))?;
        let mut monitor = Monitor::new(monitor, &self.machine);
        monitor.wait_for_prompt(deadline).map_err(e("monitor"))?;
        self.abort.check()?;
        self.restore_memory(&qmp, deadline)?;
        // Two QEMUs on one disk would wreck it: the standby must run on its own copies.
        let blocks = qmp
            .execute("query-block", None, deadline)
            .map_err(e("query-block"))?;
        writable_disks(&blocks, &self.launch.dir).map_err(|reason| {
            format!("the start script does not keep its disks in $TMPDIR: {reason}")
        })?;
        // A start from the boot cache is the machine's only QEMU: nothing to hold its network from.
        let filters = if self.in_place {
            Vec::new()
        } else {
            hold_network(&qmp, deadline)?
        };
        // Warm up: what a restore by loadvm does after it, done ahead of time.
        qmp.execute("cont", None, deadline).map_err(e("cont"))?;
        let pace_chunk = crate::qemu::console_socket::enlarge(&socket);
        let mut shell = Shell::new(
            socket
                .try_clone()
                .map_err(|e| format!("shell socket: {e}"))?,
        )
        .with_pace_chunk(pace_chunk);
        shell
            .resync(deadline)
            .map_err(|err| format!("the shell did not answer: {err}"))?;
        if self.refresh {
            // A start from the boot cache: the guest's clock and random pool, and the shares,
            // in one command (one round trip less; no `true` after it).
            let cmd = crate::qemu::boot_cache::refresh_command(&self.mounts);
            let (status, out) = shell
                .execute_in_shell(&cmd, deadline)
                .map_err(|err| format!("setting the clock, mounting the shares: {err}"))?;
            if status != 0 {
                return Err(format!(
                    "setting the guest's clock and random pool, or mounting the shared directories, failed: {}",
                    String::from_utf8_lossy(&out).trim()
                ));
            }
        } else {
            if let Some(cmd) = mount_command(&self.mounts) {
                let (status, out) = shell
                    .execute(&cmd, None, Reply::Full, deadline)
                    .map_err(|err| format!("mounting the shared directories: {err}"))?;
                if status != 0 {
                    return Err(format!(
                        "mounting the shared directories failed: {}",
                        String::from_utf8_lossy(&out).trim()
                    ));
                }
            }
            shell
                .execute("true", None, Reply::Full, deadline)
                .map_err(|err| format!("running `true`: {err}"))?;
        }
        qmp.execute("stop", None, deadline).map_err(e("stop"))?;
        Ok((monitor, qmp, socket, shell, filters))
    }
}

/// Puts a drop filter on every netdev of a standby: nothing it sends reaches the VLAN (or the
/// user-mode network), nothing from there reaches it. Returns the filters' ids.
fn hold_network(qmp: &Qmp, deadline: Deadline) -> std::result::Result<Vec<String>, String> {
    let text = qmp
        .human("info network", deadline)
        .map_err(|e| format!("info network: {e}"))?;
    let mut filters = Vec::new();
    for (i, netdev) in netdevs(&text).iter().enumerate() {
        let id = format!("{DROP_PREFIX}{i}");
        qmp.execute(
            "chardev-add",
            Some(json!({"id": id, "backend": {"type": "null", "data": {}}})),
            deadline,
        )
        .map_err(|e| format!("chardev-add {id}: {e}"))?;
        qmp.execute(
            "object-add",
            Some(json!({
                "qom-type": "filter-redirector",
                "id": id,
                "netdev": netdev,
                "queue": "all",
                "outdev": id,
            })),
            deadline,
        )
        .map_err(|e| format!("a drop filter on netdev `{netdev}`: {e}"))?;
        filters.push(id);
    }
    Ok(filters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netdevs_of_info_network() {
        let text = "virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ user.0: index=0,type=user,net=10.0.2.0,restrict=off\r\nvirtio-net-pci.1: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:01:01\r\n \\ vlan1: index=0,type=vde,sock=/tmp/vde1.ctl\r\n";
        assert_eq!(netdevs(text), ["user.0", "vlan1"]);
    }
}
