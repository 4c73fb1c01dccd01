//! The cache directory: one directory per key, written under a temporary name and renamed
//! into place once complete, so that a reader never sees half an entry.
//!
//! ```text
//! <dir>/.lock                 flock: shared while an entry is read, exclusive to rename,
//!                             evict, discard and clear
//! <dir>/<key>/manifest.json   what the entry is (Manifest), written last
//! <dir>/<key>/disk/...        the QEMU's writable disks, relative to its TMPDIR
//! <dir>/<key>/memory/         its memory image, once a start made it (memory.rs)
//! <dir>/<key>/used            its modification time: the entry's last use
//! <dir>/.tmp-<pid>-<n>/       an entry being written (removed if the run dies meanwhile)
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The manifest's format.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const USED: &str = "used";
const DISKS: &str = "disk";
const LOCK: &str = ".lock";
const TMP_PREFIX: &str = ".tmp-";
const CHUNK: usize = 1 << 20;

/// One disk file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the QEMU's TMPDIR.
    pub path: PathBuf,
    pub size: u64,
    /// CRC-32 of its content.
    pub crc32: u32,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub key: String,
    pub machine: String,
    /// Seconds since the epoch.
    pub saved: u64,
    /// The key's inputs, readable.
    pub inputs: Vec<String>,
    /// The QEMU snapshot the disks hold.
    pub snapshot: String,
    /// The shared directories to mount again after a start from the entry.
    pub mounts: Vec<crate::backend::shares::Mount>,
    pub files: Vec<FileRecord>,
    /// The machine's RAM backend when a memory image can be made of it (memory.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<super::memory::Ram>,
}

impl Manifest {
    /// Parses a manifest; the reason it is not one (for the log line that discards it).
    pub fn parse(text: &[u8], key: &str) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(text).map_err(|e| format!("its manifest is damaged ({e})"))?;
        if m.format != FORMAT {
            return Err(format!(
                "its manifest has format {} (this version reads {FORMAT})",
                m.format
            ));
        }
        if m.key != key {
            return Err(format!("its manifest is for key {}", m.key));
        }
        if m.files.is_empty() {
            return Err("its manifest lists no disk".to_string());
        }
        for f in &m.files {
            if f.path.is_absolute() || f.path.components().any(|c| c.as_os_str() == "..") {
                return Err(format!(
                    "its manifest names a disk outside it ({})",
                    f.path.display()
                ));
            }
        }
        Ok(m)
    }

    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// An entry found in the cache.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub last_used: SystemTime,
}

impl Entry {
    /// Its bytes on disk: the disks, and the memory image if there is one.
    pub fn size(&self) -> u64 {
        let image: u64 = std::fs::read_dir(self.dir.join(super::memory::DIR))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        self.manifest.size() + image
    }

    /// When it was last used, in seconds since the epoch.
    pub fn last_used_secs(&self) -> u64 {
        self.last_used
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

/// A cache directory and its size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub dir: PathBuf,
    pub limit: u64,
}

/// An flock on the cache's lock file, released when dropped.
struct Lock {
    _file: File,
}

impl Lock {
    fn take(dir: &Path, exclusive: bool) -> std::io::Result<Lock> {
        std::fs::create_dir_all(dir)?;
        let file = File::options()
            .create(true)
            .append(true)
            .open(dir.join(LOCK))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Lock { _file: file })
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Store {
    fn entry_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The entry for `key`: `Ok(None)` when there is none, `Err(reason)` when there is one that
    /// cannot be used (the caller discards it).
    pub fn lookup(&self, key: &str) -> Result<Option<Entry>, String> {
        let dir = self.entry_dir(key);
        let text = match std::fs::read(dir.join(MANIFEST)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if dir.exists() {
                    Err("it has no manifest".to_string())
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(format!("reading its manifest: {e}")),
        };
        let manifest = Manifest::parse(&text, key)?;
        let last_used = last_used(&dir);
        Ok(Some(Entry {
            dir,
            manifest,
            last_used,
        }))
    }

    /// Copies the entry's disks into `to` (same relative paths), checking each file's size
    /// and checksum on the way; marks the entry used. The reason when the entry is damaged.
    pub fn checkout(&self, entry: &Entry, to: &Path) -> Result<u64, String> {
        let _lock = Lock::take(&self.dir, false).map_err(|e| format!("locking the cache: {e}"))?;
        let mut bytes = 0;
        for f in &entry.manifest.files {
            let from = entry.dir.join(DISKS).join(&f.path);
            let size = std::fs::metadata(&from)
                .map_err(|e| format!("{}: {e}", f.path.display()))?
                .len();
            if size != f.size {
                return Err(format!(
                    "{} has {size} bytes, its manifest says {}",
                    f.path.display(),
                    f.size
                ));
            }
            let target = to.join(&f.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            let crc = copy_with_crc(&from, &target)
                .map_err(|e| format!("copying {}: {e}", f.path.display()))?;
            if crc != f.crc32 {
                return Err(format!(
                    "{} has checksum {crc:08x}, its manifest says {:08x}",
                    f.path.display(),
                    f.crc32
                ));
            }
            bytes += size;
        }
        let _ = File::create(entry.dir.join(USED));
        Ok(bytes)
    }

    /// Deletes the entry of `key`.
    pub fn discard(&self, key: &str) {
        if !valid_key(key) {
            return;
        }
        if let Ok(_lock) = Lock::take(&self.dir, true) {
            let _ = std::fs::remove_dir_all(self.entry_dir(key));
        }
    }

    /// A new entry, in a temporary directory of the cache (removed unless committed).
    /// Leftovers of runs that died are removed first.
    pub fn begin(&self) -> std::io::Result<Pending> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(&self.dir)?;
        self.remove_leftovers();
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&tmp)?;
        Ok(Pending {
            tmp,
            store: self.clone(),
            done: false,
        })
    }

    fn remove_leftovers(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The complete entries, most recently used first.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if valid_key(&name) {
                if let Ok(Some(entry)) = self.lookup(&name) {
                    out.push(entry);
                }
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        out
    }

    /// Deletes every entry (and leftovers); the number of entries deleted.
    pub fn clear(&self) -> std::io::Result<usize> {
        if !self.dir.exists() {
            return Ok(0);
        }
        let _lock = Lock::take(&self.dir, true)?;
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if valid_key(&name) {
                std::fs::remove_dir_all(e.path())?;
                n += 1;
            } else if name.starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(n)
    }

    /// Deletes the least recently used entries until the cache fits its limit, sparing
    /// `keep`; the keys deleted. The caller holds the exclusive lock.
    fn evict(&self, keep: &str) -> Vec<String> {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(Entry::size).sum();
        let mut gone = Vec::new();
        while total > self.limit {
            let Some(pos) = entries.iter().rposition(|e| e.manifest.key != keep) else {
                break;
            };
            let e = entries.remove(pos);
            let size = e.size();
            if std::fs::remove_dir_all(&e.dir).is_ok() {
                total -= size;
                gone.push(e.manifest.key);
            }
        }
        gone
    }
}

fn last_used(dir: &Path) -> SystemTime {
    std::fs::metadata(dir.join(USED))
        .or_else(|_| std::fs::metadata(dir.join(MANIFEST)))
        .and_then(|m| m.modified())
        .unwrap_or(UNIX_EPOCH)
}

/// Copies a file, returning the CRC-32 of what was copied.
fn copy_with_crc(from: &Path, to: &Path) -> std::io::Result<u32> {
    let mut input = File::open(from)?;
    let mut output = File::create(to)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
    Ok(hasher.finalize())
}

fn crc_of(path: &Path) -> std::io::Result<u32> {
    let mut input = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An entry being written: its disks are copied in (while the VM is paused), then
/// [`Pending::commit`] checksums them, writes the manifest and renames it into place.
/// Dropped uncommitted, its directory goes.
pub struct Pending {
    tmp: PathBuf,
    store: Store,
    done: bool,
}

/// What a commit did.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The entry is in place; the keys evicted to make room.
    Saved { evicted: Vec<String> },
    /// Another run saved the same key first (its entry stays).
    AlreadyThere,
}

impl Pending {
    /// Copies `files` (relative to `from`) into the entry; the bytes copied. A reflink (or
    /// an in-kernel copy) where the filesystem can.
    pub fn copy_in(&self, from: &Path, files: &[PathBuf]) -> std::io::Result<u64> {
        let mut bytes = 0;
        for f in files {
            let target = self.tmp.join(DISKS).join(f);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            bytes += std::fs::copy(from.join(f), &target)?;
        }
        Ok(bytes)
    }

    /// Checksums the copied disks, writes the manifest (its `files` filled in here), syncs
    /// everything to disk and renames the entry into place; then evicts what exceeds the
    /// size limit.
    pub fn commit(
        mut self,
        mut manifest: Manifest,
        files: &[PathBuf],
    ) -> std::io::Result<Committed> {
        manifest.format = FORMAT;
        manifest.files = Vec::new();
        for f in files {
            let path = self.tmp.join(DISKS).join(f);
            let file = File::open(&path)?;
            file.sync_all()?;
            manifest.files.push(FileRecord {
                path: f.clone(),
                size: file.metadata()?.len(),
                crc32: crc_of(&path)?,
            });
        }
        let text = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        let mut out = File::create(self.tmp.join(MANIFEST))?;
        out.write_all(&text)?;
        out.sync_all()?;
        File::create(self.tmp.join(USED))?.sync_all()?;
        fsync_dir(&self.tmp.join(DISKS))?;
        fsync_dir(&self.tmp)?;
        let _lock = Lock::take(&self.store.dir, true)?;
        let target = self.store.entry_dir(&manifest.key);
        if target.exists() {
            return Ok(Committed::AlreadyThere);
        }
        std::fs::rename(&self.tmp, &target)?;
        self.done = true;
        fsync_dir(&self.store.dir)?;
        Ok(Committed::Saved {
            evicted: self.store.evict(&manifest.key),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A size such as `8G`, `500M`, `64K` or a number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].trim_end_matches(['B', 'b', 'i'])),
        None => (t, ""),
    };
    let n: f64 = num.trim().parse().ok()?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    (n >= 0.0).then_some((n * mult as f64) as u64)
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str, limit: u64) -> Store {
        let dir =
            std::env::temp_dir().join(format!("ntng-cache-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Store { dir, limit }
    }

    fn manifest(key: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            key: key.into(),
            machine: "m".into(),
            saved: 1,
            inputs: vec!["node 1".into()],
            snapshot: "s".into(),
            mounts: Vec::new(),
            files: Vec::new(),
            ram: None,
        }
    }

    /// Saves an entry of `key` whose disk holds `content`.
    fn save(s: &Store, key: &str, content: &[u8]) -> Committed {
        let src = s.dir.with_extension(format!("src-{key}"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/d.qcow2"), content).unwrap();
        let files = [PathBuf::from("sub/d.qcow2")];
        let p = s.begin().unwrap();
        p.copy_in(&src, &files).unwrap();
        let c = p.commit(manifest(key), &files).unwrap();
        let _ = std::fs::remove_dir_all(&src);
        c
    }

    #[test]
    fn an_entry_saved_and_checked_out() {
        let s = store("roundtrip", 1 << 30);
        assert!(s.lookup("aa").unwrap().is_none());
        assert_eq!(
            save(&s, "aa", b"disk"),
            Committed::Saved { evicted: vec![] }
        );
        let e = s.lookup("aa").unwrap().unwrap();
        assert_eq!(e.manifest.files[0].size, 4);
        let out = s.dir.with_extension("out");
        assert_eq!(s.checkout(&e, &out).unwrap(), 4);
        assert_eq!(std::fs::read(out.join("sub/d.qcow2")).unwrap(), b"disk");
        // a second save of the same key keeps the first
        assert_eq!(save(&s, "aa", b"other"), Committed::AlreadyThere);
        // no temporary directory is left
        let names: Vec<String> = std::fs::read_dir(&s.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(TMP_PREFIX)),
            "{names:?}"
        );
        assert_eq!(s.entries().len(), 1);
        assert_eq!(s.clear().unwrap(), 1);
        assert!(s.entries().is_empty());
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn damaged_entries_are_refused() {
        let s = store("damaged", 1 << 30);
        save(&s, "bb", b"0123456789");
        let e = s.lookup("bb").unwrap().unwrap();
        let disk = e.dir.join(DISKS).join("sub/d.qcow2");
        let out = s.dir.with_extension("out2");
        // same size, other content
        std::fs::write(&disk, b"0123456780").unwrap();
        let why = s.checkout(&e, &out).unwrap_err();
        assert!(why.contains("checksum"), "{why}");
        // truncated
        std::fs::write(&disk, b"01234").unwrap();
        let why = s.checkout(&e, &out).unwrap_err();
        assert!(why.contains("has 5 bytes, its manifest says 10"), "{why}");
        // a truncated manifest
        let m = e.dir.join(MANIFEST);
        let text = std::fs::read(&m).unwrap();
        std::fs::write(&m, &text[..text.len() / 2]).unwrap();
        let why = s.lookup("bb").unwrap_err();
        assert!(why.contains("manifest is damaged"), "{why}");
        // a missing manifest
        std::fs::remove_file(&m).unwrap();
        assert_eq!(s.lookup("bb").unwrap_err(), "it has no manifest");
        s.discard("bb");
        assert!(s.lookup("bb").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn manifests_that_are_not_ours() {
        let mut m = manifest("cc");
        m.files.push(FileRecord {
            path: "d".into(),
            size: 1,
            crc32: 0,
        });
        let ok = serde_json::to_vec(&m).unwrap();
        assert!(Manifest::parse(&ok, "cc").is_ok());
        assert!(Manifest::parse(&ok, "dd")
            .unwrap_err()
            .contains("for key cc"));
        let mut bad = m.clone();
        bad.files[0].path = "../../etc/passwd".into();
        let why = Manifest::parse(&serde_json::to_vec(&bad).unwrap(), "cc").unwrap_err();
        assert!(why.contains("outside"), "{why}");
        bad = m.clone();
        bad.format = 99;
        assert!(Manifest::parse(&serde_json::to_vec(&bad).unwrap(), "cc").is_err());
        assert!(Manifest::parse(b"", "cc").is_err());
    }

    #[test]
    fn the_least_recently_used_go_first() {
        // room for two entries of 10 bytes
        let s = store("evict", 25);
        save(&s, "01", b"0123456789");
        save(&s, "02", b"0123456789");
        // 01 used after 02
        let old = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(s.dir.join("02").join(USED))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            save(&s, "03", b"0123456789"),
            Committed::Saved {
                evicted: vec!["02".to_string()]
            }
        );
        let keys: Vec<String> = s.entries().into_iter().map(|e| e.manifest.key).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"01".to_string()) && keys.contains(&"03".to_string()));
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn a_failed_save_leaves_nothing() {
        let s = store("failed", 1 << 30);
        let p = s.begin().unwrap();
        let e = p.copy_in(Path::new("/nonexistent"), &[PathBuf::from("d")]);
        assert!(e.is_err());
        drop(p);
        let left: Vec<_> = std::fs::read_dir(&s.dir).unwrap().flatten().collect();
        assert!(left.iter().all(|e| e.file_name() == LOCK), "{left:?}");
        let _ = std::fs::remove_dir_all(&s.dir);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("3X"), None);
    }
}
