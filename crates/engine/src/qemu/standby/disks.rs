//! The disks of a standby: which files a QEMU writes (they must live in its TMPDIR), and
//! their copies (the golden copy of a snapshot, a standby's own copy of it).

use std::collections::BTreeSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The disks of a snapshot, kept for standbys.
#[derive(Clone)]
pub(super) struct Golden {
    pub(super) dir: PathBuf,
    /// The writable disk files, relative to the QEMU's TMPDIR.
    pub(super) files: Vec<PathBuf>,
    /// The snapshots those disk copies hold.
    pub(super) snapshots: BTreeSet<String>,
}

/// The writable disk files of a QEMU (from `query-block`), relative to its TMPDIR `dir`; an
/// error saying which disk cannot be copied for a standby.
pub(crate) fn writable_disks(
    blocks: &Value,
    dir: &Path,
) -> std::result::Result<Vec<PathBuf>, String> {
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

/// Copies `files` (relative paths) from `from` into `to`.
pub(super) fn copy_files(from: &Path, to: &Path, files: &[PathBuf]) -> std::io::Result<u64> {
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

pub(crate) fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

pub(crate) fn fmt_bytes(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
