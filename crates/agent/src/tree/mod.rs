//! PUT and GET of file trees, never following a symlink inside the tree: every step is an
//! `*at` call relative to a directory fd opened with O_NOFOLLOW.

pub mod get;
pub mod put;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path};

use crate::sys;

/// Opening a directory inside a tree: a symlink or non-directory there is an error.
pub const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Where a request's tree lives: its parent directory (reached by following the request's
/// path as given: the host chose it) and the root's name in it (`None` for `/`).
pub struct Anchor {
    pub parent: OwnedFd,
    pub name: Option<CString>,
}

impl Anchor {
    /// `path` must be absolute and free of `..`; `create_parents` makes missing parents.
    pub fn new(path: &str, create_parents: bool) -> Result<Anchor, String> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(format!("{path:?} is not an absolute path"));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(format!("{path:?} has a '..' component"));
        }
        let (parent, name) = match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => (parent, Some(name)),
            _ => (Path::new("/"), None),
        };
        if create_parents {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let cparent = sys::cpath(parent.as_os_str()).map_err(|e| e.to_string())?;
        let parent_fd = sys::openat(
            libc::AT_FDCWD,
            &cparent,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| format!("cannot open {}: {e}", parent.display()))?;
        let name = name
            .map(sys::cpath)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Anchor {
            parent: parent_fd,
            name,
        })
    }

    /// The directory at `components` below the root, each step without following links.
    pub fn open_dir(&self, components: &[&str]) -> io::Result<OwnedFd> {
        let mut dir = match &self.name {
            Some(name) => sys::openat(self.parent.as_raw_fd(), name, DIR_FLAGS, 0)?,
            None => self.parent.try_clone()?,
        };
        for part in components {
            dir = sys::openat(dir.as_raw_fd(), &sys::cname(part)?, DIR_FLAGS, 0)?;
        }
        Ok(dir)
    }

    /// The directory holding the entry at `components`, and the entry's name in it (the root's
    /// own name, or "" for `/`, when `components` is empty).
    pub fn locate(&self, components: &[&str]) -> io::Result<(OwnedFd, CString)> {
        match components.split_last() {
            None => Ok((
                self.parent.try_clone()?,
                self.name.clone().unwrap_or_default(),
            )),
            Some((last, parents)) => Ok((self.open_dir(parents)?, sys::cname(last)?)),
        }
    }
}

/// Says why a step failed, naming a symlink or non-directory in the way as such.
pub fn describe(path: &str, e: &io::Error) -> String {
    let shown = if path.is_empty() { "the root" } else { path };
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            format!("{shown:?}: a symlink or non-directory is in the way (not followed): {e}")
        }
        _ => format!("{shown:?}: {e}"),
    }
}
