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

mod disks;
mod start;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Control, ControlState, QemuBackend, Qmp, Running};
use crate::backend::shares::Mount;
use crate::backend::{Host, Launched, MachineInfo, ShellSetup};
use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::transport::connector::Ready;
use disks::{copy_files, Golden};
pub(crate) use disks::{fmt_bytes, fresh_dir, writable_disks};
use start::{Abort, Job, Standby};

/// The environment variable that turns standbys off (`0`).
pub const ENV_SWITCH: &str = "NIXOS_TEST_NG_STANDBY";
/// Monitor and QMP calls of the swap.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

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

/// A saved state to start a machine from (a boot cache entry's).
pub(crate) struct CachedState {
    /// Its disk files, relative to the directory they are in.
    pub(crate) files: Vec<PathBuf>,
    /// The QEMU snapshot they hold.
    pub(crate) snapshot: String,
    /// The shares to mount again.
    pub(crate) mounts: Vec<Mount>,
    /// How the guest's memory comes back.
    pub(crate) memory: crate::qemu::boot_cache::memory::Start,
}

/// The writable disk files to copy for standbys (relative to `live_dir`), or why standbys
/// cannot serve this machine, judged from its live QEMU.
fn eligible(qmp: &Qmp, live_dir: &Path) -> Result<std::result::Result<Vec<PathBuf>, String>> {
    if std::env::var(ENV_SWITCH).is_ok_and(|v| v.trim() == "0") {
        return Ok(Err(format!("{ENV_SWITCH}=0")));
    }
    let deadline = Deadline::after(Some(CONTROL_TIMEOUT));
    let usernet = qmp.human("info usernet", deadline)?;
    if usernet.contains("HOST_FORWARD") {
        return Ok(Err(
            "port forwards are configured (host ports cannot be held by two QEMUs)".to_string(),
        ));
    }
    Ok(writable_disks(
        &qmp.execute("query-block", None, deadline)?,
        live_dir,
    ))
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
            eligible(control.qmp(), &live_dir)?
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
        let files = match verdict {
            Ok(files) => files,
            Err(reason) => {
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
        };
        st.off = None;
        drop(st);
        drop_slot(old_slot);

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
                    "warm standby off for snapshot {name}: copying its disks into {} failed: {e} \
                     (the half-written copy was removed)",
                    dir.display()
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

        let mut launch = self.command_for(info, &dir, self.allow_reboot.load(Ordering::SeqCst));
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
            in_place: false,
            refresh: false,
            memory: crate::qemu::boot_cache::memory::Start::Loadvm,
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
        host: &dyn Host,
        name: &str,
        mounts: &[Mount],
    ) -> Result<bool> {
        let info = host.info();
        let live_dir = self.live_dir().unwrap_or_else(|| info.state_dir.clone());
        let mut st = self.standbys.shared.state.lock().unwrap();
        let on_live_disk = st.on_disk.get(&live_dir).is_some_and(|s| s.contains(name));
        if !on_live_disk && st.golden.contains_key(name) {
            // Only a standby from the golden copy can bring it back: wait for it.
            drop(st);
            info.log(&format!(
                "the disk of the running QEMU does not hold snapshot {name}: restoring it from its golden copy"
            ));
            return self.wait_and_switch(host, name, mounts);
        }
        let reason = match &st.slot {
            Slot::Ready(sb) if sb.name == name && sb.process.is_running() => {
                let Slot::Ready(sb) = std::mem::take(&mut st.slot) else {
                    unreachable!()
                };
                drop(st);
                self.swap(host, *sb)?;
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
    fn wait_and_switch(&self, host: &dyn Host, name: &str, mounts: &[Mount]) -> Result<bool> {
        let info = host.info();
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
                    self.swap(host, *sb)?;
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

    /// The live QEMU goes, the standby takes its place (still paused): the machine adopts
    /// it as its launch, then its network filters are lifted.
    fn swap(&self, host: &dyn Host, sb: Standby) -> Result<()> {
        let info = host.info();
        let tic = Instant::now();
        let Standby {
            name,
            dir,
            process,
            shell,
            socket,
            pace_chunk,
            monitor,
            qmp,
            relay,
            relay_thread,
            filters,
            snapshots,
        } = sb;
        let old = self.running.lock().unwrap().take();
        let process = Arc::new(process);
        // The old QEMU dies first: it must not send another packet once the standby can.
        host.adopt(Launched {
            process: process.clone(),
            console_reader: relay_thread,
            connector: Box::new(Ready::new(socket)),
            shell: ShellSetup::backdoor().paced_by(pace_chunk),
            shell_in_step: Some(shell),
            agent: None,
        });
        relay.attach(
            host.console().clone(),
            info.logger.clone(),
            info.name.clone(),
        );
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
            dir: dir.clone(),
            vsock_daemon: None,
        }));
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
        lifted.map_err(|e| {
            host.guest_error(format!(
                "the warm standby could not take over (lifting its network filters): {e}"
            ))
        })?;
        info.log(&format!(
            "restored snapshot {name}: switched to the warm standby (pid {pid}) in {:.3} s",
            tic.elapsed().as_secs_f64()
        ));
        if info.vnc {
            let control = self.running(info)?.control(info)?;
            self.take_over_display(info, control.qmp());
        }
        Ok(())
    }

    /// Starts the machine from disks already in `dir` (a boot cache entry's, as `from` says):
    /// a standby started on the spot, its clock and random pool refreshed, taken over as the
    /// machine's launch and resumed. The reason when that fails (its QEMU is gone then).
    pub(crate) fn start_from(
        &self,
        host: &dyn Host,
        dir: &Path,
        from: CachedState,
        allow_reboot: bool,
    ) -> std::result::Result<Launched, String> {
        let CachedState {
            files,
            snapshot,
            mounts,
            memory,
        } = from;
        let snapshot = snapshot.as_str();
        let info = host.info();
        let mut launch = self.command_for(info, dir, allow_reboot);
        launch.extra = memory.args(snapshot);
        let snapshots = BTreeSet::from([snapshot.to_string()]);
        let job = Job {
            launch,
            machine: info.name.clone(),
            state_dir: info.state_dir.clone(),
            logger: info.logger.clone(),
            name: snapshot.to_string(),
            golden: Arc::new(Golden {
                dir: dir.to_path_buf(),
                files,
                snapshots: snapshots.clone(),
            }),
            mounts,
            abort: Arc::default(),
            in_place: true,
            refresh: true,
            memory,
        };
        let Standby {
            process,
            shell,
            socket,
            pace_chunk,
            monitor,
            qmp,
            relay,
            relay_thread,
            filters,
            ..
        } = job.run()?;
        // An in-place job holds no network (it is the machine's only QEMU): no filters to lift.
        debug_assert!(filters.is_empty());
        let deadline = Deadline::after(Some(CONTROL_TIMEOUT));
        qmp.discard_events(); // those of the warm-up
        relay.attach(
            host.console().clone(),
            info.logger.clone(),
            info.name.clone(),
        );
        let resumed = qmp
            .execute("cont", None, deadline)
            .map(drop)
            .map_err(|e| format!("cont: {e}"));
        if let Err(reason) = resumed {
            process.kill();
            let _ = relay_thread.join();
            return Err(reason);
        }
        let process = Arc::new(process);
        *self.running.lock().unwrap() = Some(Arc::new(Running {
            process: process.clone(),
            control: Mutex::new(ControlState::Ready(Arc::new(Control {
                monitor: Mutex::new(monitor),
                qmp,
            }))),
            dir: dir.to_path_buf(),
            vsock_daemon: None,
        }));
        self.standbys
            .shared
            .state
            .lock()
            .unwrap()
            .on_disk
            .insert(dir.to_path_buf(), snapshots);
        if info.vnc {
            if let Ok(control) = self.running(info).and_then(|r| r.control(info)) {
                self.take_over_display(info, control.qmp());
            }
        }
        Ok(Launched {
            process,
            console_reader: relay_thread,
            connector: Box::new(Ready::new(socket)),
            shell: ShellSetup::backdoor().paced_by(pace_chunk),
            shell_in_step: Some(shell),
            agent: None,
        })
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
