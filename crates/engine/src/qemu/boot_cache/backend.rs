//! The boot cache in the QEMU backend: a launch that starts from an entry, and the save of a
//! VM at its first handshake.

use std::path::PathBuf;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{fmt_time, gather, memory, short, store, Manifest, Store, HIT_DIR, SNAPSHOT};
use crate::backend::shares::Mount;
use crate::backend::{Host, Launched, MachineInfo};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::qemu::snapshot::{hmp_error, savevm_refusal};
use crate::qemu::standby::{fmt_bytes, fresh_dir, writable_disks, CachedState};
use crate::qemu::{display_available, QemuBackend};

/// A save the cache wants: the key of the launch that booted normally.
struct Wanted {
    store: Store,
    key: String,
    inputs: Vec<String>,
}

/// A machine's side of the cache.
#[derive(Default)]
pub(crate) struct CacheState {
    /// Set by a launch that missed; armed at its first handshake.
    wanted: Mutex<Option<Wanted>>,
    /// The entry being committed in the background.
    commit: Mutex<Option<JoinHandle<()>>>,
}

impl CacheState {
    /// Waits for a commit in progress (at the end of the machine).
    pub(crate) fn finish(&self) {
        if let Some(handle) = self.commit.lock().unwrap().take() {
            let _ = handle.join();
        }
    }
}

impl QemuBackend {
    /// With the cache on: the launch from the entry of this launch's key when there is a
    /// usable one (a damaged one is discarded, with a log line), else `None`, and the first
    /// handshake of this launch will save it.
    pub(crate) fn launch_from_cache(
        &self,
        host: &dyn Host,
        allow_reboot: bool,
        vsock: bool,
    ) -> Option<Launched> {
        let info = host.info();
        *self.boot_cache.wanted.lock().unwrap() = None;
        let store = info.boot_cache.clone()?;
        if vsock {
            info.log(&format!(
                "not using the boot cache: this VM gets a vsock device for the guest agent (set {}=backdoor to use the cache)",
                crate::config::TRANSPORT_VAR
            ));
            return None;
        }
        let mut appended = QemuBackend::appended_args(
            std::path::Path::new("$STATE"),
            allow_reboot,
            display_available(),
        );
        if info.vnc {
            appended.push("-vnc".into());
        }
        appended.extend(super::DEVICE_ARGS.iter().map(|a| a.to_string()));
        let inputs = gather(&self.start_command, info, appended);
        let key = inputs.key();
        let found = store.lookup(&key);
        let discard = |reason: String| {
            info.log(&format!(
                "boot cache entry {} discarded: {reason}; booting normally",
                short(&key)
            ));
            store.discard(&key);
        };
        match found {
            Ok(Some(entry)) => match self.start_cached(host, &store, &entry, allow_reboot) {
                Ok(launched) => return Some(launched),
                Err(reason) => discard(reason),
            },
            Ok(None) => {}
            Err(reason) => discard(reason),
        }
        *self.boot_cache.wanted.lock().unwrap() = Some(Wanted {
            store,
            key,
            inputs: inputs.readable(),
        });
        None
    }

    fn start_cached(
        &self,
        host: &dyn Host,
        store: &Store,
        entry: &store::Entry,
        allow_reboot: bool,
    ) -> std::result::Result<Launched, String> {
        let info = host.info();
        let tic = Instant::now();
        let dir = info.state_dir.join(HIT_DIR);
        fresh_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let copied = store.checkout(entry, &dir)?;
        let copy_time = tic.elapsed().as_secs_f64();
        let m = &entry.manifest;
        let files: Vec<PathBuf> = m.files.iter().map(|f| f.path.clone()).collect();
        let memory = memory_start(info, entry, &dir);
        let mapped = matches!(memory, memory::Start::Mapped { .. });
        let from = CachedState {
            files,
            snapshot: m.snapshot.clone(),
            mounts: m.mounts.clone(),
            memory,
        };
        match self.start_from(host, &dir, from, allow_reboot) {
            Ok(launched) => {
                info.log(&format!(
                    "started from the boot cache (key {}, saved {}) in {:.2} s ({} copied in {copy_time:.2} s{})",
                    short(&m.key),
                    fmt_time(m.saved),
                    tic.elapsed().as_secs_f64(),
                    fmt_bytes(copied),
                    if mapped { "; memory mapped from its image" } else { "" },
                ));
                Ok(launched)
            }
            Err(reason) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(format!("its QEMU did not start from it: {reason}"))
            }
        }
    }

    /// Takes the save this launch wants, if any (at its first handshake).
    pub(crate) fn cache_wants_save(&self) -> bool {
        self.boot_cache.wanted.lock().unwrap().is_some()
    }

    /// With the VM paused and its shares (`mounts`) unmounted: `savevm`, then its writable
    /// disks copied into a new entry, committed in the background. QEMU's refusal is an
    /// `Error::SnapshotRefused`; a failure of the copy (a full disk) only a log line.
    pub(crate) fn save_to_cache(&self, info: &MachineInfo, mounts: &[Mount]) -> Result<()> {
        let Some(wanted) = self.boot_cache.wanted.lock().unwrap().take() else {
            return Ok(());
        };
        let refused = |reason: String, fix: String| Error::SnapshotRefused {
            machine: info.name.clone(),
            name: SNAPSHOT.to_string(),
            reason,
            fix,
        };
        if self.unsaveable() {
            return Err(refused(
                crate::qemu::vsock::SNAPSHOT_REASON.to_string(),
                crate::qemu::vsock::SNAPSHOT_FIX.to_string(),
            ));
        }
        let live_dir = self
            .running
            .lock()
            .unwrap()
            .as_ref()
            .map_or_else(|| info.state_dir.clone(), |r| r.dir.clone());
        let (files, ram) = {
            let control = self.running(info)?.control(info)?;
            let deadline = Deadline::after(Some(std::time::Duration::from_secs(60)));
            let blocks = control.qmp().execute("query-block", None, deadline)?;
            let files = writable_disks(&blocks, &live_dir).map_err(|reason| {
                refused(
                    reason,
                    "the start script must keep the VM's writable disks in $TMPDIR".to_string(),
                )
            })?;
            (files, memory::default_backend(control.qmp(), deadline))
        };
        if let Some(text) = hmp_error(&self.hmp(info, &format!("savevm {SNAPSHOT}"))?) {
            let (reason, fix) = savevm_refusal(text);
            return Err(refused(reason, fix));
        }
        // `stop` again: QEMU's caches of the disks go to the host before the copy.
        self.hmp(info, "stop")?;
        let tic = Instant::now();
        let pending = wanted.store.begin().and_then(|p| {
            let bytes = p.copy_in(&live_dir, &files)?;
            Ok((p, bytes))
        });
        let (pending, bytes) = match pending {
            Ok(v) => v,
            Err(e) => {
                info.log(&format!(
                    "not saved in the boot cache: copying its disks into {} failed: {e}",
                    wanted.store.dir.display()
                ));
                return Ok(());
            }
        };
        info.log(&format!(
            "saving in the boot cache (key {}): {} copied in {:.2} s while paused",
            short(&wanted.key),
            fmt_bytes(bytes),
            tic.elapsed().as_secs_f64()
        ));
        let manifest = Manifest {
            format: 0,
            key: wanted.key.clone(),
            machine: info.name.clone(),
            saved: store::now_secs(),
            inputs: wanted.inputs,
            snapshot: SNAPSHOT.to_string(),
            mounts: mounts.to_vec(),
            files: Vec::new(),
            ram,
        };
        let (logger, name, key) = (info.logger.clone(), info.name.clone(), wanted.key);
        let handle = std::thread::Builder::new()
            .name(format!("ntng-boot-cache-{}", info.name))
            .spawn(move || {
                let line = match pending.commit(manifest, &files) {
                    Ok(super::Committed::Saved { evicted }) if evicted.is_empty() => {
                        format!("saved in the boot cache (key {})", short(&key))
                    }
                    Ok(super::Committed::Saved { evicted }) => format!(
                        "saved in the boot cache (key {}); evicted to stay within its size limit: {}",
                        short(&key),
                        evicted.iter().map(|k| short(k)).collect::<Vec<_>>().join(", ")
                    ),
                    Ok(super::Committed::AlreadyThere) => format!(
                        "not saved in the boot cache: another run saved key {} first",
                        short(&key)
                    ),
                    Err(e) => format!("not saved in the boot cache: {e}"),
                };
                logger.log(&line, Some(&name));
            })
            .expect("cannot start a boot-cache thread");
        let old = self.boot_cache.commit.lock().unwrap().replace(handle);
        if let Some(old) = old {
            let _ = old.join();
        }
        Ok(())
    }
}

/// How a start from `entry` (its disks copied into `dir`) gets the guest's memory: mapped from
/// the entry's memory image when it has a usable one, else loaded from the snapshot, making
/// the image on the way when the entry says how. A damaged image is deleted (with a log line)
/// and made again.
fn memory_start(info: &MachineInfo, entry: &store::Entry, dir: &std::path::Path) -> memory::Start {
    let Some(ram) = entry.manifest.ram.clone() else {
        return memory::Start::Loadvm;
    };
    match memory::find(&entry.dir, &ram) {
        Ok(Some(image)) => return memory::Start::Mapped { ram, image },
        Ok(None) => {}
        Err(reason) => {
            info.log(&format!(
                "boot cache entry {}: {reason}; loading its snapshot and making the image again",
                short(&entry.manifest.key)
            ));
            let _ = std::fs::remove_dir_all(entry.dir.join(memory::DIR));
        }
    }
    memory::Start::Make {
        ram,
        live_ram: dir.join("memory-ram"),
        entry_dir: entry.dir.clone(),
    }
}
