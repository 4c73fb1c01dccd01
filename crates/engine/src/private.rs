//! Directories only the driver's user can reach: the one place for that rule.
//!
//! The driver's tmp dir is often a shared `/tmp`, where upstream's names (`vm-state-<name>`,
//! `shared-xchg`, `vde<n>.ctl`) are predictable: another user could create one first and
//! read the sockets and files the driver puts in it. So a directory is created atomically
//! with mode 0700 (`mkdir(2)` with the mode, never a create-then-chmod), and one that already
//! exists is used only if it is a real directory (not a symlink) owned by this user; its mode
//! is then tightened to 0700 through a descriptor, so no path can be swapped in between.
//! Everything the driver makes inside such a directory (sockets, disks, golden copies,
//! exchange dirs) is out of other users' reach whatever its own mode.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory the driver creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` as a directory only this user can enter, or takes over an existing one
/// this user owns (tightening its mode to 0700). Missing parents are created with 0700.
/// Fails with `PermissionDenied` naming the owner when `path` belongs to someone else, and
/// with `AlreadyExists` when it is a symlink or not a directory.
pub fn dir(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        // The umask can only clear bits of 0700; a group or other bit is never set.
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => take_over(path),
        Err(e) => Err(e),
    }
}

fn take_over(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open(2) on a NUL-terminated path; the descriptor is owned by `File` below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(refine_nofollow(path, io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let dir = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let meta = dir.metadata()?;
    check_owner(path, &meta)?;
    if meta.mode() & 0o7777 != DIR_MODE {
        dir.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

fn check_owner(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let me = euid();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} already exists and belongs to uid {}, not to this user (uid {me}): \
                 refusing to use it (remove it, or set TMPDIR or XDG_RUNTIME_DIR to a \
                 private directory)",
                path.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// `O_NOFOLLOW` on a symlink gives `ELOOP`, `O_DIRECTORY` on a file `ENOTDIR`: say which.
fn refine_nofollow(path: &Path, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists and is a symlink or not a directory: refusing to use it",
                path.display()
            ),
        ),
        _ => e,
    }
}

fn euid() -> u32 {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ntng-private-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_dir_is_0700_and_its_missing_parents_too() {
        let d = scratch("new");
        let p = d.join("a/b/c");
        dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
        assert_eq!(mode(&d.join("a/b")), 0o700);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_own_loose_dir_is_tightened_and_kept() {
        let d = scratch("loose");
        let p = d.join("vm-state-m");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("kept"), b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
        assert!(p.join("kept").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_is_refused_not_followed() {
        let d = scratch("symlink");
        let target = d.join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = d.join("shared-xchg");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = dir(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(mode(&target), 0o755);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_refused() {
        let d = scratch("file");
        let p = d.join("vde1.ctl");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(dir(&p).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_dir_of_another_user_is_refused_naming_its_owner() {
        let d = scratch("other");
        // Root can make a directory owned by nobody; anyone else finds "/" owned by root.
        let (p, owner) = if euid() == 0 {
            let p = d.join("vm-state-m");
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
            (p, 65534)
        } else {
            (std::path::PathBuf::from("/"), 0)
        };
        let before = mode(&p);
        let e = dir(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains(&format!("belongs to uid {owner}")),
            "{e}"
        );
        assert_eq!(mode(&p), before, "the other user's directory is left alone");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
