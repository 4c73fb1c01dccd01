//! An entry's memory image: the guest's RAM as a file and QEMU's device state without it, so
//! that a start maps the RAM (copy-on-write: nothing is read up front, the host's page cache
//! serves what the guest touches) instead of `-loadvm` reading all of it from the snapshot
//! (about 0.25 s for the 256 MiB busybox VM under TCG, 85 MiB of it not zero).
//!
//! ```text
//! save (a run that booted):  the RAM backend's id and size go in the manifest (`Ram`)
//! first start from the entry: its RAM a shared file in the run's directory, `-S -loadvm`,
//!     then x-ignore-shared on → `migrate` (device state only) → the RAM file copied →
//!     <entry>/memory/{state,ram,stamp.json} published; x-ignore-shared off; the run goes on
//! later starts:  `-S -incoming defer`, the RAM a private mapping of <entry>/memory/ram,
//!     x-ignore-shared on → `migrate-incoming` of the state → x-ignore-shared off
//! ```
//!
//! An incoming migration, not `loadvm` of a snapshot without RAM: `loadvm` resets the machine
//! first, which writes the kernel and initrd blobs of `-kernel`/`-initrd` into RAM again (over
//! the guest's own), while a machine waiting for an incoming migration leaves RAM alone.
//! A start script that brings its own RAM backend (the agent's shared memory) gets none.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::qemu::qmp::Qmp;
use crate::transport::shell::shell_quote;

/// The subdirectory of an entry holding its memory image.
pub const DIR: &str = "memory";
const RAM: &str = "ram";
const STATE: &str = "state";
const STAMP: &str = "stamp.json";
/// The QOM type of the RAM backend QEMU makes itself for `-m`, the only one replaced.
const DEFAULT_BACKEND: &str = "memory-backend-ram";

/// The machine's RAM backend, as QEMU made it for `-m` (in the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ram {
    /// Its id (`pc.ram`), which the memory image's backend takes, so the device state fits.
    pub id: String,
    pub size: u64,
}

/// What a memory image was when it was made: a RAM file changed since (or cut short) is not
/// used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    ram_size: u64,
    ram_mtime_ns: i128,
    ram_ino: u64,
    state_size: u64,
    state_crc32: u32,
}

/// A usable memory image of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub ram: PathBuf,
    pub state: PathBuf,
}

/// The RAM backend of a running QEMU when it is the default one QEMU made for `-m`; `None`
/// otherwise (the start script brings its own, or QEMU does not say).
pub fn default_backend(qmp: &Qmp, deadline: crate::interrupt::Deadline) -> Option<Ram> {
    let path = qmp
        .execute(
            "qom-get",
            Some(serde_json::json!({"path": "/machine", "property": "memory-backend"})),
            deadline,
        )
        .ok()?;
    let path = path.as_str()?.to_string();
    let id = path.strip_prefix("/objects/")?.to_string();
    let children = qmp
        .execute(
            "qom-list",
            Some(serde_json::json!({"path": "/objects"})),
            deadline,
        )
        .ok()?;
    let child_type = format!("child<{DEFAULT_BACKEND}>");
    let is_default = children.as_array()?.iter().any(|c| {
        c.get("name").and_then(|n| n.as_str()) == Some(id.as_str())
            && c.get("type").and_then(|t| t.as_str()) == Some(child_type.as_str())
    });
    if !is_default {
        return None;
    }
    let size = qmp
        .execute(
            "qom-get",
            Some(serde_json::json!({"path": path, "property": "size"})),
            deadline,
        )
        .ok()?
        .as_u64()?;
    Some(Ram { id, size })
}

/// The QEMU arguments that back `ram` by the file `path`: shared (the guest's writes reach
/// the file) or private (copy-on-write: the file is never written).
pub fn backend_args(ram: &Ram, path: &Path, shared: bool) -> Vec<String> {
    let path = path.to_string_lossy().replace(',', ",,");
    vec![
        "-object".into(),
        format!(
            "memory-backend-file,id={},size={},mem-path={path},share={}",
            ram.id,
            ram.size,
            if shared { "on" } else { "off" }
        ),
        "-machine".into(),
        format!("memory-backend={}", ram.id),
    ]
}

/// The entry's memory image when it has a complete one that matches `ram`; `Err` names what
/// is wrong with one that is there but not usable.
pub fn find(entry_dir: &Path, ram: &Ram) -> Result<Option<Image>, String> {
    let dir = entry_dir.join(DIR);
    let text = match std::fs::read(dir.join(STAMP)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading its memory image's stamp: {e}")),
    };
    let stamp: Stamp = serde_json::from_slice(&text)
        .map_err(|e| format!("its memory image's stamp is damaged ({e})"))?;
    let image = Image {
        ram: dir.join(RAM),
        state: dir.join(STATE),
    };
    let meta = std::fs::metadata(&image.ram).map_err(|e| format!("its memory image: {e}"))?;
    let now = (meta.len(), mtime_ns(&meta), meta.ino());
    if now != (stamp.ram_size, stamp.ram_mtime_ns, stamp.ram_ino) || stamp.ram_size != ram.size {
        return Err(format!(
            "its memory image changed since it was made ({} bytes, the machine has {})",
            meta.len(),
            ram.size
        ));
    }
    let state = std::fs::read(&image.state).map_err(|e| format!("its device state: {e}"))?;
    if state.len() as u64 != stamp.state_size || crc32fast::hash(&state) != stamp.state_crc32 {
        return Err("its device state is damaged".to_string());
    }
    Ok(Some(image))
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Sets QEMU's `x-ignore-shared` migration capability: on, the RAM of shared backends is
/// neither sent nor expected.
pub fn ignore_shared(
    qmp: &Qmp,
    on: bool,
    deadline: crate::interrupt::Deadline,
) -> Result<(), String> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": on}]})),
        deadline,
    )
    .map(drop)
    .map_err(|e| format!("x-ignore-shared: {e}"))
}

/// Makes the memory image of the paused QEMU behind `qmp`, whose RAM is the shared file
/// `live_ram`, and publishes it in `entry_dir` (unless another run did first). QEMU's
/// migration state is left as it found it (x-ignore-shared off).
pub fn make(
    qmp: &Qmp,
    live_ram: &Path,
    entry_dir: &Path,
    deadline: crate::interrupt::Deadline,
) -> Result<(), String> {
    let tmp = entry_dir.join(format!("{DIR}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let result = (|| {
        ignore_shared(qmp, true, deadline)?;
        let sent = save_device_state(qmp, &tmp.join(STATE), deadline);
        ignore_shared(qmp, false, deadline)?;
        sent?;
        std::fs::copy(live_ram, tmp.join(RAM))
            .map_err(|e| format!("copying the guest's memory: {e}"))?;
        let state =
            std::fs::read(tmp.join(STATE)).map_err(|e| format!("reading the state: {e}"))?;
        let ram = File::open(tmp.join(RAM)).map_err(|e| format!("the memory copy: {e}"))?;
        ram.sync_all()
            .map_err(|e| format!("syncing the memory copy: {e}"))?;
        let meta = ram
            .metadata()
            .map_err(|e| format!("the memory copy: {e}"))?;
        let stamp = Stamp {
            ram_size: meta.len(),
            ram_mtime_ns: mtime_ns(&meta),
            ram_ino: meta.ino(),
            state_size: state.len() as u64,
            state_crc32: crc32fast::hash(&state),
        };
        let text = serde_json::to_vec_pretty(&stamp).map_err(|e| e.to_string())?;
        let mut out = File::create(tmp.join(STAMP)).map_err(|e| format!("the stamp: {e}"))?;
        out.write_all(&text)
            .and_then(|()| out.sync_all())
            .map_err(|e| format!("writing the stamp: {e}"))?;
        match std::fs::rename(&tmp, entry_dir.join(DIR)) {
            Ok(()) => Ok(()),
            // another run published one first
            Err(e) if entry_dir.join(DIR).exists() => {
                let _ = e;
                Ok(())
            }
            Err(e) => Err(format!("publishing it: {e}")),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Migrates the paused VM's device state into the file `to` and waits for the end.
fn save_device_state(
    qmp: &Qmp,
    to: &Path,
    deadline: crate::interrupt::Deadline,
) -> Result<(), String> {
    let uri = format!("exec:cat > {}", shell_quote(&to.to_string_lossy()));
    qmp.execute("migrate", Some(serde_json::json!({"uri": uri})), deadline)
        .map_err(|e| format!("migrate: {e}"))?;
    loop {
        let status = qmp
            .execute("query-migrate", None, deadline)
            .map_err(|e| format!("query-migrate: {e}"))?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = status
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("no reason given");
                return Err(format!("the migration to a file failed: {why}"));
            }
            _ if deadline.expired() => return Err("the migration to a file took too long".into()),
            _ => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}

/// Loads `image`'s device state into the QEMU behind `qmp`, started with `-S -incoming defer`
/// and its RAM mapped from the image, and waits until it is loaded (the VM stays paused).
pub fn load(qmp: &Qmp, image: &Image, deadline: crate::interrupt::Deadline) -> Result<(), String> {
    ignore_shared(qmp, true, deadline)?;
    let uri = format!("exec:cat {}", shell_quote(&image.state.to_string_lossy()));
    qmp.execute(
        "migrate-incoming",
        Some(serde_json::json!({"uri": uri})),
        deadline,
    )
    .map_err(|e| format!("migrate-incoming: {e}"))?;
    loop {
        let status = qmp
            .execute("query-status", None, deadline)
            .map_err(|e| format!("loading the device state: {e}"))?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("inmigrate") if deadline.expired() => {
                return Err("loading the device state took too long".into())
            }
            Some("inmigrate") => std::thread::sleep(std::time::Duration::from_millis(2)),
            _ => break,
        }
    }
    ignore_shared(qmp, false, deadline)
}

/// How a start from a boot cache entry gets the guest's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// `-loadvm` reads it from the snapshot (an entry without a RAM backend to replace).
    Loadvm,
    /// As [`Start::Loadvm`], into the shared file `live_ram`; then the image is made from it
    /// and published in `entry_dir`.
    Make {
        ram: Ram,
        live_ram: PathBuf,
        entry_dir: PathBuf,
    },
    /// The RAM mapped from the image, the device state migrated in.
    Mapped { ram: Ram, image: Image },
}

impl Start {
    /// QEMU's arguments for a start from `snapshot`, paused.
    pub fn args(&self, snapshot: &str) -> Vec<String> {
        let loadvm = ["-S".to_string(), "-loadvm".into(), snapshot.to_string()];
        match self {
            Start::Loadvm => loadvm.to_vec(),
            Start::Make { ram, live_ram, .. } => {
                let mut args = backend_args(ram, live_ram, true);
                args.extend(loadvm);
                args
            }
            Start::Mapped { ram, image } => {
                let mut args = backend_args(ram, &image.ram, false);
                args.extend(["-S".into(), "-incoming".into(), "defer".into()]);
                args
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ntng-memory-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(DIR)).unwrap();
        dir
    }

    fn write_image(entry: &Path, ram: &[u8], state: &[u8]) {
        let dir = entry.join(DIR);
        std::fs::write(dir.join(RAM), ram).unwrap();
        std::fs::write(dir.join(STATE), state).unwrap();
        let meta = std::fs::metadata(dir.join(RAM)).unwrap();
        let stamp = Stamp {
            ram_size: meta.len(),
            ram_mtime_ns: mtime_ns(&meta),
            ram_ino: meta.ino(),
            state_size: state.len() as u64,
            state_crc32: crc32fast::hash(state),
        };
        std::fs::write(dir.join(STAMP), serde_json::to_vec(&stamp).unwrap()).unwrap();
    }

    fn ram(size: u64) -> Ram {
        Ram {
            id: "pc.ram".into(),
            size,
        }
    }

    #[test]
    fn a_complete_image_is_found_and_a_missing_one_is_none() {
        let entry = image_dir("found");
        assert_eq!(find(&entry, &ram(4096)), Ok(None));
        write_image(&entry, &[7u8; 4096], b"state");
        let image = find(&entry, &ram(4096)).unwrap().unwrap();
        assert_eq!(image.ram, entry.join(DIR).join(RAM));
        let _ = std::fs::remove_dir_all(&entry);
    }

    #[test]
    fn a_changed_truncated_or_mismatched_image_is_refused() {
        let entry = image_dir("refused");
        write_image(&entry, &[7u8; 4096], b"state");
        // another machine size
        assert!(find(&entry, &ram(8192)).unwrap_err().contains("changed"));
        // the RAM cut short
        std::fs::OpenOptions::new()
            .write(true)
            .open(entry.join(DIR).join(RAM))
            .unwrap()
            .set_len(100)
            .unwrap();
        assert!(find(&entry, &ram(4096)).unwrap_err().contains("changed"));
        // the state damaged
        write_image(&entry, &[7u8; 4096], b"state");
        std::fs::write(entry.join(DIR).join(STATE), b"stale").unwrap();
        assert!(find(&entry, &ram(4096)).unwrap_err().contains("damaged"));
        // the stamp damaged
        std::fs::write(entry.join(DIR).join(STAMP), b"{").unwrap();
        assert!(find(&entry, &ram(4096)).unwrap_err().contains("damaged"));
        let _ = std::fs::remove_dir_all(&entry);
    }

    #[test]
    fn each_start_pauses_the_vm_and_only_a_mapped_one_waits_for_a_migration() {
        let r = ram(4096);
        assert_eq!(Start::Loadvm.args("s"), ["-S", "-loadvm", "s"]);
        let make = Start::Make {
            ram: r.clone(),
            live_ram: "/run/ram".into(),
            entry_dir: "/cache/k".into(),
        };
        assert_eq!(&make.args("s")[4..], ["-S", "-loadvm", "s"]);
        assert!(make.args("s")[1].ends_with("mem-path=/run/ram,share=on"));
        let mapped = Start::Mapped {
            ram: r,
            image: Image {
                ram: "/cache/k/memory/ram".into(),
                state: "/cache/k/memory/state".into(),
            },
        };
        assert_eq!(&mapped.args("s")[4..], ["-S", "-incoming", "defer"]);
        assert!(mapped.args("s")[1].ends_with("share=off"));
    }

    #[test]
    fn the_backend_arguments_escape_commas_and_say_how_the_file_is_mapped() {
        let args = backend_args(&ram(256 << 20), Path::new("/a,b/ram"), false);
        assert_eq!(
            args,
            [
                "-object",
                "memory-backend-file,id=pc.ram,size=268435456,mem-path=/a,,b/ram,share=off",
                "-machine",
                "memory-backend=pc.ram",
            ]
        );
        assert!(backend_args(&ram(1), Path::new("/r"), true)[1].ends_with("share=on"));
    }
}
