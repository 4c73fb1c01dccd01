//! Warm standby: a restore in tens of milliseconds, by switching to a second QEMU that already
//! sits at the snapshot.
//!
//! ```text
//! snapshot X (VM paused): savevm X → disks copied to <state>/golden-X/
//! then, in the background: <state>/standby-<n>/ ← golden-X's disks (same relative paths)
//!   start script, TMPDIR=standby-<n>, + `-S -loadvm X`      (its own sockets there)
//!   every netdev held by a drop filter (filter-redirector into a null chardev)
//!   warm-up: cont, shell resync, shares mounted (one command), `true`; stop
//! restore X: kill the live QEMU → lift the filters → the standby's console, shell, monitor
//!   and QMP become the machine's (the caller resumes it) → next standby in the background
//! ```
//!
//! A restore uses `loadvm` on the live QEMU instead, saying why in the log, when standbys are
//! off (`NIXOS_TEST_NG_STANDBY=0`, host port forwards, a writable disk outside the machine's
//! TMPDIR), when the standby failed to start, or when it is not ready yet (its preparation
//! still runs, e.g. right after the previous restore).
//!
//! Disks: QEMU keeps internal snapshots in the qcow2 files, so which snapshots a QEMU can
//! `loadvm` depends on the lineage of its disk; `on_disk` records it per TMPDIR. A snapshot
//! that the live disk does not hold (taken on a disk that was since replaced) is restored by
//! a standby started on the spot from its golden copy.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    accept_from, listen_at, AcceptError, Control, ControlState, Launch, Monitor, QemuBackend, Qmp,
    Running,
};
use crate::console::Console;
use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::log::Logger;
use crate::machine::snapshot::{mount_command, Mount};
use crate::machine::MachineInfo;
use crate::process::{self, ChildProcess};
use crate::transport::shell::{Reply, Shell};

/// The environment variable that turns standbys off (`0`).
pub const ENV_SWITCH: &str = "NIXOS_TEST_NG_STANDBY";
/// How long a standby may take from its start to paused and warm.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);
/// Monitor and QMP calls of the swap.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// Console lines of a standby kept for a failure message before it takes over.
const HELD_LINES: usize = 40;
/// The ids of the drop filters and their chardevs: `<prefix><netdev index>`.
const DROP_PREFIX: &str = "ntng-drop-";

/// How a machine was brought back to a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rewind {
    /// `loadvm` on the live QEMU: the shell needs a resync and the shares a mount.
    Loadvm,
    /// A warm standby took over: its shell is in step and its shares are mounted.
    Standby,
}

/// The disks of a snapshot, kept for standbys.
#[derive(Clone)]
struct Golden {
    dir: PathBuf,
    /// The writable disk files, relative to the QEMU's TMPDIR.
    files: Vec<PathBuf>,
    /// The snapshots those disk copies hold.
    snapshots: BTreeSet<String>,
}

/// A standby QEMU, paused at its snapshot, warm, its network held.
struct Standby {
    name: String,
    dir: PathBuf,
    process: ChildProcess,
    shell: Shell,
    socket: UnixStream,
    monitor: Monitor,
    qmp: Qmp,
    relay: Arc<Relay>,
    relay_thread: JoinHandle<()>,
    filters: Vec<String>,
    snapshots: BTreeSet<String>,
}

impl Standby {
    /// Kills it and deletes its directory.
    fn discard(self) {
        self.process.kill();
        let _ = self.relay_thread.join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops a standby being prepared: kills its QEMU once there is one.
#[derive(Default)]
struct Abort {
    state: Mutex<(bool, Option<u32>)>,
}

impl Abort {
    fn abort(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        if let Some(pgid) = s.1 {
            // SAFETY: plain syscall on the standby's own process group.
            unsafe {
                libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
            }
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.state.lock().unwrap().0 {
            Err("cancelled".to_string())
        } else {
            Ok(())
        }
    }

    /// Records the standby's process group, unless aborted already.
    fn register(&self, process: &ChildProcess) -> std::result::Result<(), String> {
        let mut s = self.state.lock().unwrap();
        if s.0 {
            return Err("cancelled".to_string());
        }
        s.1 = Some(process.pid());
        Ok(())
    }

    fn unregister(&self) {
        self.state.lock().unwrap().1 = None;
    }
}

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    Preparing {
        name: String,
        generation: u64,
        abort: Arc<Abort>,
    },
    Ready(Box<Standby>),
    Failed {
        name: String,
        reason: String,
    },
}

#[derive(Default)]
struct State {
    golden: BTreeMap<String, Arc<Golden>>,
    /// Which snapshots the disks in each QEMU TMPDIR hold.
    on_disk: BTreeMap<PathBuf, BTreeSet<String>>,
    slot: Slot,
    /// The number of the next `standby-<n>` directory.
    next_dir: u32,
    generation: u64,
    /// Why standbys are off, when they are (logged when it changes).
    off: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A machine's golden copies and its standby.
#[derive(Default)]
pub(super) struct Standbys {
    shared: Arc<Shared>,
}

impl Drop for Standbys {
    /// A machine dropped without a release (e.g. from `create_machine`) takes its standby
    /// along, even one still on its way.
    fn drop(&mut self) {
        let slot = std::mem::take(&mut self.shared.state.lock().unwrap().slot);
        drop_slot(slot);
    }
}

/// The console of a standby: held back (the last lines, for failure messages) until it takes
/// over, then the machine's console and log.
struct Relay {
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
    fn spawn(stream: impl Read + Send + 'static, machine: &str) -> (Arc<Relay>, JoinHandle<()>) {
        let relay = Arc::new(Relay {
            sink: Mutex::new(Sink::Held(VecDeque::new())),
        });
        let r = relay.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ntng-standby-console-{machine}"))
            .spawn(move || {
                let mut reader = BufReader::with_capacity(64 * 1024, stream);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    raw.retain(|&b| b != b'\r');
                    let line = String::from_utf8_lossy(&raw).trim_end().to_string();
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
                            console.push(line);
                        }
                    }
                }
                if let Sink::Machine { console, .. } = &*r.sink.lock().unwrap() {
                    console.close();
                }
            })
            .expect("cannot start a console reader thread");
        (relay, handle)
    }

    fn attach(&self, console: Arc<Console>, logger: Arc<Logger>, machine: String) {
        *self.sink.lock().unwrap() = Sink::Machine {
            console,
            logger,
            machine,
        };
    }

    fn last_line(&self) -> Option<String> {
        match &*self.sink.lock().unwrap() {
            Sink::Held(lines) => lines.iter().rev().find(|l| !l.trim().is_empty()).cloned(),
            Sink::Machine { .. } => None,
        }
    }
}

/// Why standbys cannot serve this machine, judged from the live QEMU; `None` when they can.
fn ineligible(qmp: &Qmp, live_dir: &Path) -> Result<Option<String>> {
    if std::env::var(ENV_SWITCH).is_ok_and(|v| v.trim() == "0") {
        return Ok(Some(format!("{ENV_SWITCH}=0")));
    }
    let deadline = Deadline::after(Some(CONTROL_TIMEOUT));
    let usernet = qmp.human("info usernet", deadline)?;
    if usernet.contains("HOST_FORWARD") {
        return Ok(Some(
            "port forwards are configured (host ports cannot be held by two QEMUs)".to_string(),
        ));
    }
    match writable_disks(&qmp.execute("query-block", None, deadline)?, live_dir) {
        Ok(_) => Ok(None),
        Err(reason) => Ok(Some(reason)),
    }
}

/// The writable disk files of a QEMU (from `query-block`), relative to its TMPDIR `dir`; an
/// error saying which disk cannot be copied for a standby.
fn writable_disks(blocks: &Value, dir: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut files = Vec::new();
    for block in blocks.as_array().into_iter().flatten() {
        let Some(inserted) = block.get("inserted") else {
            continue;
        };
        if inserted.get("ro").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let image = &inserted["image"];
        let file = image["filename"]
            .as_str()
            .or_else(|| inserted["file"].as_str())
            .unwrap_or_default();
        let path = Path::new(file);
        let device = block["device"].as_str().unwrap_or("?");
        if !path.is_absolute() {
            return Err(format!(
                "disk `{device}` ({file}) is not a plain file in the machine's TMPDIR"
            ));
        }
        let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let Ok(rel) = real.strip_prefix(&dir) else {
            return Err(format!(
                "disk `{device}` ({file}) lives outside the machine's TMPDIR {}",
                dir.display()
            ));
        };
        if let Some(backing) = image.get("backing-filename").and_then(Value::as_str) {
            if !Path::new(backing).is_absolute() {
                return Err(format!(
                    "disk `{device}` ({file}) has a relative backing file `{backing}`"
                ));
            }
        }
        files.push(rel.to_path_buf());
    }
    Ok(files)
}

/// The netdev ids in HMP's `info network` (the ` \ id: index=..,type=..` lines).
fn netdevs(info_network: &str) -> Vec<String> {
    info_network
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("\\ ")?;
            let (id, attrs) = rest.split_once(": ")?;
            (!attrs.contains("type=nic")).then(|| id.trim().to_string())
        })
        .collect()
}

/// Copies `files` (relative paths) from `from` into `to`.
fn copy_files(from: &Path, to: &Path, files: &[PathBuf]) -> std::io::Result<u64> {
    let mut bytes = 0;
    for f in files {
        let target = to.join(f);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // std::fs::copy uses copy_file_range: in the kernel, and a reflink where supported.
        bytes += std::fs::copy(from.join(f), &target)?;
    }
    Ok(bytes)
}

fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

fn fmt_bytes(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

/// Everything a standby's preparation needs, owned (it runs in its own thread).
struct Job {
    launch: Launch,
    machine: String,
    state_dir: PathBuf,
    logger: Arc<Logger>,
    name: String,
    golden: Arc<Golden>,
    mounts: Vec<Mount>,
    abort: Arc<Abort>,
}

impl Job {
    fn log(&self, msg: &str) {
        self.logger.log(msg, Some(&self.machine));
    }

    /// Starts the standby and warms it up; the reason when that fails.
    fn run(&self) -> std::result::Result<Standby, String> {
        let dir = &self.launch.dir;
        fresh_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // The start script makes `$TMPDIR/xchg` and shares it; it stays the machine's one.
        let _ = std::os::unix::fs::symlink(self.state_dir.join("xchg"), dir.join("xchg"));
        copy_files(&self.golden.dir, dir, &self.golden.files)
            .map_err(|e| format!("copying the golden disks: {e}"))?;
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
        monitor_l: &std::os::unix::net::UnixListener,
        shell_l: &std::os::unix::net::UnixListener,
    ) -> std::result::Result<(Monitor, Qmp, UnixStream, Shell, Vec<String>), String> {
        let deadline = Deadline::after(Some(PREPARE_TIMEOUT));
        let accept = |l, what: &str| {
            accept_from(l, process, deadline).map_err(|e| match e {
                AcceptError::Exited(status) => {
                    format!("its QEMU exited ({status}) before connecting to the {what} socket")
                }
                AcceptError::TimedOut => format!("its QEMU never connected to the {what} socket"),
                AcceptError::Io(e) => format!("accepting its {what} socket: {e}"),
                AcceptError::Interrupted => "interrupted".to_string(),
            })
        };
        let monitor = accept(monitor_l, "monitor")?;
        let socket = accept(shell_l, "shell")?;
        fn e(what: &'static str) -> impl Fn(Error) -> String {
            move |err| format!("{what}: {err}")
        }
        let qmp = Qmp::connect(&self.launch.dir.join("qmp"), deadline).map_err(e("QMP"))?;
        let mut monitor = Monitor::new(monitor);
        monitor.wait_for_prompt(deadline).map_err(e("monitor"))?;
        self.abort.check()?;
        // Two QEMUs on one disk would wreck it: the standby must run on its own copies.
        let blocks = qmp
            .execute("query-block", None, deadline)
            .map_err(e("query-block"))?;
        writable_disks(&blocks, &self.launch.dir).map_err(|reason| {
            format!("the start script does not keep its disks in $TMPDIR: {reason}")
        })?;
        let filters = hold_network(&qmp, deadline)?;
        // Warm up: what a restore by loadvm does after it, done ahead of time.
        qmp.execute("cont", None, deadline).map_err(e("cont"))?;
        let mut shell = Shell::new(
            socket
                .try_clone()
                .map_err(|e| format!("shell socket: {e}"))?,
        );
        shell
            .resync(deadline)
            .map_err(|err| format!("the shell did not answer: {err}"))?;
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

impl QemuBackend {
    /// An HMP command on the live QEMU, without the polling-condition hook (the machine may
    /// be paused: a condition running a command on it would wait forever).
    pub(crate) fn hmp(&self, info: &MachineInfo, command: &str) -> Result<String> {
        let control = self.running(info)?.control(info)?;
        let mut monitor = control.monitor.lock().unwrap();
        monitor.send(command, Deadline::after(Some(Duration::from_secs(300))))
    }

    fn live_dir(&self) -> Option<PathBuf> {
        self.running.lock().unwrap().as_ref().map(|r| r.dir.clone())
    }

    /// Right after `savevm name`, the VM still paused (and flushed): records that the live
    /// disk holds `name` and copies it to `<state>/golden-<name>` for standbys. A failure
    /// only turns standbys off for this snapshot (logged).
    pub(crate) fn keep_golden(&self, info: &MachineInfo, name: &str) -> Result<()> {
        let live_dir = self.live_dir().unwrap_or_else(|| info.state_dir.clone());
        let verdict = {
            let control = self.running(info)?.control(info)?;
            ineligible(control.qmp(), &live_dir)?
        };
        let mut st = self.standbys.shared.state.lock().unwrap();
        // An older snapshot of this name lives on in other disks: they no longer hold `name`.
        for (dir, names) in st.on_disk.iter_mut() {
            if *dir != live_dir {
                names.remove(name);
            }
        }
        let mut snapshots = st.on_disk.entry(live_dir.clone()).or_default().clone();
        snapshots.insert(name.to_string());
        st.on_disk.insert(live_dir.clone(), snapshots.clone());
        if let Some(old) = st.golden.remove(name) {
            let _ = std::fs::remove_dir_all(&old.dir);
        }
        for g in st.golden.values_mut() {
            if g.snapshots.contains(name) {
                let mut copy = (**g).clone();
                copy.snapshots.remove(name);
                *g = Arc::new(copy);
            }
        }
        // A standby of the old `name` is stale.
        let stale = match &st.slot {
            Slot::Ready(sb) => sb.name == name,
            Slot::Preparing { name: n, .. } | Slot::Failed { name: n, .. } => n == name,
            Slot::Empty => false,
        };
        let old_slot = if stale {
            std::mem::take(&mut st.slot)
        } else {
            Slot::Empty
        };
        if let Some(reason) = verdict {
            if st.off.as_deref() != Some(&reason) {
                info.log(&format!(
                    "warm standby off: {reason}; restores will use loadvm"
                ));
            }
            st.off = Some(reason);
            drop(st);
            drop_slot(old_slot);
            return Ok(());
        }
        st.off = None;
        drop(st);
        drop_slot(old_slot);

        let control = self.running(info)?.control(info)?;
        let blocks =
            control
                .qmp()
                .execute("query-block", None, Deadline::after(Some(CONTROL_TIMEOUT)))?;
        let files = writable_disks(&blocks, &live_dir).unwrap_or_default();
        let dir = info.state_dir.join(format!("golden-{name}"));
        let tic = Instant::now();
        let copied = fresh_dir(&dir).and_then(|()| copy_files(&live_dir, &dir, &files));
        match copied {
            Ok(bytes) => {
                info.log(&format!(
                    "golden copy of snapshot {name}: {} in {:.2} s",
                    fmt_bytes(bytes),
                    tic.elapsed().as_secs_f64()
                ));
                let golden = Golden {
                    dir,
                    files,
                    snapshots,
                };
                let mut st = self.standbys.shared.state.lock().unwrap();
                st.golden.insert(name.to_string(), Arc::new(golden));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                info.log(&format!(
                    "warm standby off for snapshot {name}: copying its disks failed: {e}"
                ));
            }
        }
        Ok(())
    }

    /// Prepares a standby for snapshot `name` in the background, unless one is ready or on
    /// its way, or failed (it is not tried again until the snapshot is taken again); a
    /// standby for another snapshot is dropped.
    pub(crate) fn prepare_standby(&self, info: &MachineInfo, name: &str, mounts: &[Mount]) {
        let mut st = self.standbys.shared.state.lock().unwrap();
        match &st.slot {
            Slot::Ready(sb) if sb.name == name => return,
            Slot::Preparing { name: n, .. } | Slot::Failed { name: n, .. } if n == name => return,
            _ => {}
        }
        let Some(golden) = st.golden.get(name).cloned() else {
            return;
        };
        let old = std::mem::take(&mut st.slot);
        st.next_dir += 1;
        st.generation += 1;
        let generation = st.generation;
        let abort = Arc::new(Abort::default());
        st.slot = Slot::Preparing {
            name: name.to_string(),
            generation,
            abort: abort.clone(),
        };
        let dir = info.state_dir.join(format!("standby-{}", st.next_dir));
        drop(st);
        drop_slot(old);

        let mut launch = self.launch(info, &dir, self.allow_reboot.load(Ordering::SeqCst));
        launch.extra = vec!["-S".into(), "-loadvm".into(), name.to_string()];
        let job = Job {
            launch,
            machine: info.name.clone(),
            state_dir: info.state_dir.clone(),
            logger: info.logger.clone(),
            name: name.to_string(),
            golden,
            mounts: mounts.to_vec(),
            abort,
        };
        let shared = self.standbys.shared.clone();
        std::thread::Builder::new()
            .name(format!("ntng-standby-{}", info.name))
            .spawn(move || {
                let tic = Instant::now();
                let result = job.run();
                let mut st = shared.state.lock().unwrap();
                let current =
                    matches!(&st.slot, Slot::Preparing { generation: g, .. } if *g == generation);
                let leftover = match result {
                    Ok(sb) if current => {
                        job.log(&format!(
                            "warm standby ready for snapshot {} (pid {}, in {:.2} s)",
                            job.name,
                            sb.process.pid(),
                            tic.elapsed().as_secs_f64()
                        ));
                        st.slot = Slot::Ready(Box::new(sb));
                        None
                    }
                    Ok(sb) => Some(sb),
                    Err(reason) => {
                        if current {
                            job.log(&format!(
                                "warm standby for snapshot {} failed: {reason}",
                                job.name
                            ));
                            st.slot = Slot::Failed {
                                name: job.name.clone(),
                                reason,
                            };
                        }
                        let _ = std::fs::remove_dir_all(&job.launch.dir);
                        None
                    }
                };
                drop(st);
                shared.changed.notify_all();
                if let Some(sb) = leftover {
                    sb.discard();
                }
            })
            .expect("cannot start a standby thread");
    }

    /// Restores `name` by switching to its standby when one is ready: the machine is then the
    /// standby, paused. `false` (with a log line saying why) when the caller should `loadvm`.
    /// `mounts` are the snapshot's shares, for a standby that must be started on the spot.
    pub(crate) fn switch_to_standby(
        &self,
        info: &MachineInfo,
        name: &str,
        mounts: &[Mount],
    ) -> Result<bool> {
        let live_dir = self.live_dir().unwrap_or_else(|| info.state_dir.clone());
        let mut st = self.standbys.shared.state.lock().unwrap();
        let on_live_disk = st.on_disk.get(&live_dir).is_some_and(|s| s.contains(name));
        if !on_live_disk && st.golden.contains_key(name) {
            // Only a standby from the golden copy can bring it back: wait for it.
            drop(st);
            info.log(&format!(
                "the disk of the running QEMU does not hold snapshot {name}: restoring it from its golden copy"
            ));
            return self.wait_and_switch(info, name, mounts);
        }
        let reason = match &st.slot {
            Slot::Ready(sb) if sb.name == name && sb.process.is_running() => {
                let Slot::Ready(sb) = std::mem::take(&mut st.slot) else {
                    unreachable!()
                };
                drop(st);
                self.swap(info, *sb)?;
                return Ok(true);
            }
            Slot::Ready(sb) if sb.name == name => {
                // Its QEMU is gone: drop it, so that the next one can be prepared.
                let slot = std::mem::take(&mut st.slot);
                drop(st);
                drop_slot(slot);
                info.log(&format!(
                    "restoring snapshot {name} with loadvm (its standby QEMU exited)"
                ));
                return Ok(false);
            }
            Slot::Preparing { name: n, .. } if n == name => {
                format!("the standby for snapshot {name} is not ready yet")
            }
            Slot::Failed { name: n, reason } if n == name => {
                format!("the standby failed: {reason}")
            }
            _ => match &st.off {
                Some(off) if !st.golden.contains_key(name) => format!("warm standby off: {off}"),
                _ if !st.golden.contains_key(name) => {
                    format!("no golden copy of snapshot {name}")
                }
                _ => format!("no standby for snapshot {name} yet"),
            },
        };
        drop(st);
        info.log(&format!("restoring snapshot {name} with loadvm ({reason})"));
        Ok(false)
    }

    /// Waits for the standby of `name` (started now if need be) and switches to it.
    fn wait_and_switch(&self, info: &MachineInfo, name: &str, mounts: &[Mount]) -> Result<bool> {
        let fail = |reason: String| Error::InvalidState {
            machine: info.name.clone(),
            message: format!("cannot restore snapshot {name:?}: {reason}"),
        };
        loop {
            let mut st = self.standbys.shared.state.lock().unwrap();
            match &st.slot {
                Slot::Ready(sb) if sb.name == name => {
                    let Slot::Ready(sb) = std::mem::take(&mut st.slot) else {
                        unreachable!()
                    };
                    drop(st);
                    if !sb.process.is_running() {
                        sb.discard();
                        return Err(fail("its standby QEMU exited".to_string()));
                    }
                    self.swap(info, *sb)?;
                    return Ok(true);
                }
                Slot::Preparing { name: n, .. } if n == name => {
                    let _ = self
                        .standbys
                        .shared
                        .changed
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap();
                    interrupt::check()?;
                }
                Slot::Failed { name: n, reason } if n == name => {
                    return Err(fail(format!("its standby failed: {reason}")));
                }
                _ => {
                    drop(st);
                    self.prepare_standby(info, name, mounts);
                    let st = self.standbys.shared.state.lock().unwrap();
                    if !matches!(&st.slot, Slot::Preparing { name: n, .. } if n == name) {
                        return Err(fail("no golden copy of it".to_string()));
                    }
                }
            }
        }
    }

    /// The live QEMU goes, the standby takes its place (still paused).
    fn swap(&self, info: &MachineInfo, sb: Standby) -> Result<()> {
        let tic = Instant::now();
        let Standby {
            name,
            dir,
            process,
            shell,
            socket,
            monitor,
            qmp,
            relay,
            relay_thread,
            filters,
            snapshots,
        } = sb;
        // The old QEMU dies first: it must not send another packet once the standby can.
        let old = self.running.lock().unwrap().take();
        self.shell.clear();
        if let Some(old) = &old {
            old.process.kill();
            if let Some(reader) = old.console_reader.lock().unwrap().take() {
                let _ = reader.join();
            }
        }
        self.console.reopen();
        relay.attach(self.console.clone(), info.logger.clone(), info.name.clone());
        let deadline = Deadline::after(Some(CONTROL_TIMEOUT));
        let lifted = filters.iter().try_for_each(|id| {
            qmp.execute("object-del", Some(json!({ "id": id })), deadline)
                .map(drop)
        });
        qmp.discard_events(); // those of the warm-up
        let pid = process.pid();
        *self.running.lock().unwrap() = Some(Arc::new(Running {
            process,
            control: Mutex::new(ControlState::Ready(Arc::new(Control {
                monitor: Mutex::new(monitor),
                qmp,
            }))),
            console_reader: Mutex::new(Some(relay_thread)),
            dir: dir.clone(),
        }));
        self.shell.set_synced(shell, &socket);
        {
            let mut st = self.standbys.shared.state.lock().unwrap();
            st.on_disk.insert(dir, snapshots);
            if let Some(old) = &old {
                if old.dir != info.state_dir {
                    st.on_disk.remove(&old.dir);
                }
            }
        }
        if let Some(old) = old {
            if old.dir != info.state_dir {
                let dir = old.dir.clone();
                std::thread::spawn(move || {
                    let _ = std::fs::remove_dir_all(dir);
                });
            }
        }
        lifted.map_err(|e| Error::Guest {
            machine: info.name.clone(),
            message: format!(
                "the warm standby could not take over (lifting its network filters): {e}"
            ),
            console_tail: self.console.tail(20),
        })?;
        info.log(&format!(
            "restored snapshot {name}: switched to the warm standby (pid {pid}) in {:.3} s",
            tic.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Waits until the standby being prepared is ready or failed, at most `timeout`; true when
    /// one is ready.
    pub fn wait_for_standby(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = Deadline::after(timeout);
        let mut st = self.standbys.shared.state.lock().unwrap();
        loop {
            match &st.slot {
                Slot::Ready(_) => return Ok(true),
                Slot::Preparing { .. } if !deadline.expired() => {}
                _ => return Ok(false),
            }
            interrupt::check()?;
            st = self
                .standbys
                .shared
                .changed
                .wait_timeout(st, deadline.slice())
                .unwrap()
                .0;
        }
    }

    /// Kills the standby (ready or on its way). At the end of the machine (`everything`), also
    /// deletes the golden copies and the standby directories no QEMU runs on; after a power
    /// off they stay, so that a restarted machine can still be restored.
    pub(super) fn discard_standbys(&self, everything: bool) {
        let live_dir = self.live_dir();
        let mut st = self.standbys.shared.state.lock().unwrap();
        let slot = std::mem::take(&mut st.slot);
        let mut delete = Vec::new();
        if everything {
            delete.extend(
                std::mem::take(&mut st.golden)
                    .into_values()
                    .map(|g| g.dir.clone()),
            );
            st.on_disk.retain(|dir, _| Some(dir) == live_dir.as_ref());
        }
        drop(st);
        drop_slot(slot);
        for dir in delete {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Ends whatever a slot held: kills a ready standby, aborts one being prepared.
fn drop_slot(slot: Slot) {
    match slot {
        Slot::Ready(sb) => sb.discard(),
        Slot::Preparing { abort, .. } => abort.abort(),
        Slot::Empty | Slot::Failed { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netdevs_of_info_network() {
        let text = "virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ user.0: index=0,type=user,net=10.0.2.0,restrict=off\r\nvirtio-net-pci.1: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:01:01\r\n \\ vlan1: index=0,type=vde,sock=/tmp/vde1.ctl\r\n";
        assert_eq!(netdevs(text), ["user.0", "vlan1"]);
    }

    #[test]
    fn writable_disks_must_live_in_the_tmpdir() {
        let dir = tempdir();
        std::fs::write(dir.join("m.qcow2"), b"").unwrap();
        let inside = json!([
            {"device": "cd", "locked": false},
            {"device": "ro", "inserted": {"ro": true, "image": {"filename": "/nix/store/x.img"}}},
            {"device": "virtio0", "inserted": {"ro": false, "image": {
                "filename": dir.join("m.qcow2").display().to_string(),
                "backing-filename": "/images/base.raw"}}},
        ]);
        assert_eq!(
            writable_disks(&inside, &dir).unwrap(),
            [PathBuf::from("m.qcow2")]
        );
        let outside = json!([{"device": "virtio0", "inserted": {"ro": false, "image": {
            "filename": "/var/lib/disk.qcow2"}}}]);
        let e = writable_disks(&outside, &dir).unwrap_err();
        assert!(e.contains("outside the machine's TMPDIR"), "{e}");
        let relative = json!([{"device": "virtio0", "inserted": {"ro": false, "image": {
            "filename": dir.join("m.qcow2").display().to_string(),
            "backing-filename": "base.raw"}}}]);
        let e = writable_disks(&relative, &dir).unwrap_err();
        assert!(e.contains("relative backing file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ntng-standby-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fresh_dir(&dir).unwrap();
        dir
    }
}
