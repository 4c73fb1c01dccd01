//! File trees on the host for the agent's PUT and GET (`transport/agent.rs`): reading a host
//! tree into entries, and writing a tree that came from the guest without ever reading or
//! writing outside it.
//!
//! The writer walks every entry's path from a directory descriptor of the target's parent,
//! one component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`, so a symlink the guest
//! planted (or one already on the host) is never followed; files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` after whatever was at their name is unlinked, symlinks are
//! created as links. Entry paths pass the protocol's relative-path rule first.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_protocol::{validate_relative_path, Entry, EntryKind};

/// Why a tree could not be read or written on the host.
#[derive(Debug, thiserror::Error)]
pub enum TreeFault {
    /// The guest sent an entry path that is absolute, has `..`, `.` or empty components.
    #[error("refused an entry from the guest: {0}")]
    BadPath(String),
    /// The tree's frames do not fit together (data beyond a file's size, ...).
    #[error("{0}")]
    Protocol(String),
    /// A host file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_fault(context: impl Into<String>) -> impl FnOnce(io::Error) -> TreeFault {
    let context = context.into();
    move |source| TreeFault::Io { context, source }
}

fn cstring(name: &str) -> Result<CString, TreeFault> {
    CString::new(name).map_err(|_| TreeFault::BadPath(format!("{name:?} contains a NUL byte")))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens `name` in `dir` as a directory, never through a symlink.
fn open_dir_at(dir: &OwnedFd, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: a valid dir fd and a NUL-terminated name.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What is at `name` in `dir`, not following a symlink: `None` when nothing is.
fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<Option<libc::mode_t>> {
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid dir fd, a NUL-terminated name and a stat buffer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(st.st_mode & libc::S_IFMT))
}

/// Writes a tree that arrives entry by entry at `<parent>/<name>` (the root entry "" is that
/// path itself). An existing directory is written into; anything else in an entry's way is
/// replaced. Directory modes are applied at the end, so read-only ones can be filled first.
pub struct TreeWriter {
    parent: OwnedFd,
    name: String,
    shown: PathBuf,
    /// The file being written and how many bytes it still expects.
    file: Option<(File, u64, u32, String)>,
    /// Directories made or reused, with their modes, parents first.
    dirs: Vec<(Vec<String>, u32)>,
}

impl TreeWriter {
    /// A writer for `<parent>/<name>`; `parent` must exist (it is the host's own choice).
    pub fn new(parent: &Path, name: &str) -> Result<TreeWriter, TreeFault> {
        let c = CString::new(parent.as_os_str().as_bytes())
            .map_err(|_| TreeFault::BadPath(format!("{parent:?} contains a NUL byte")))?;
        // SAFETY: a NUL-terminated path.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(io_fault(format!("opening {}", parent.display())))?;
        validate_relative_path(name).map_err(|e| TreeFault::BadPath(e.to_string()))?;
        Ok(TreeWriter {
            // SAFETY: just opened, owned by nothing else.
            parent: unsafe { OwnedFd::from_raw_fd(fd) },
            name: name.to_string(),
            shown: parent.join(name),
            file: None,
            dirs: Vec::new(),
        })
    }

    fn host_path(&self, parts: &[String]) -> PathBuf {
        let mut p = self.shown.clone();
        for part in &parts[1..] {
            p.push(part);
        }
        p
    }

    /// The directory holding the last of `parts`, reached without following links.
    fn open_parent(&self, parts: &[String]) -> Result<OwnedFd, TreeFault> {
        let mut dir = self
            .parent
            .try_clone()
            .map_err(io_fault("duplicating a directory descriptor"))?;
        for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
            dir = open_dir_at(&dir, &cstring(part)?)
                .map_err(|e| not_a_dir(&self.host_path(&parts[..=i]), e))?;
        }
        Ok(dir)
    }

    /// Removes what is at `leaf` unless it is a directory and `keep_dir`; true when a
    /// directory stays.
    fn clear_leaf(
        &self,
        dir: &OwnedFd,
        leaf: &CString,
        keep_dir: bool,
        shown: &Path,
    ) -> Result<bool, TreeFault> {
        let what =
            stat_at(dir, leaf).map_err(io_fault(format!("inspecting {}", shown.display())))?;
        match what {
            None => Ok(false),
            Some(libc::S_IFDIR) if keep_dir => Ok(true),
            Some(libc::S_IFDIR) => Err(TreeFault::Io {
                context: format!("{} is a directory", shown.display()),
                source: io::Error::from_raw_os_error(libc::EISDIR),
            }),
            Some(_) => {
                // SAFETY: a valid dir fd and a NUL-terminated name; unlinks the name itself.
                check(unsafe { libc::unlinkat(dir.as_raw_fd(), leaf.as_ptr(), 0) })
                    .map_err(io_fault(format!("replacing {}", shown.display())))?;
                Ok(false)
            }
        }
    }

    /// Starts the next entry.
    pub fn entry(&mut self, entry: &Entry) -> Result<(), TreeFault> {
        if let Some((_, left, _, path)) = &self.file {
            return Err(TreeFault::Protocol(format!(
                "an entry came while {left} bytes of {path:?} were still due"
            )));
        }
        let rel =
            validate_relative_path(&entry.path).map_err(|e| TreeFault::BadPath(e.to_string()))?;
        let mut parts = vec![self.name.clone()];
        parts.extend(rel.iter().map(|s| s.to_string()));
        let shown = self.host_path(&parts);
        let dir = self.open_parent(&parts)?;
        let leaf = cstring(parts.last().expect("the name is always there"))?;
        match entry.kind {
            EntryKind::Dir => {
                if !self.clear_leaf(&dir, &leaf, true, &shown)? {
                    // SAFETY: a valid dir fd and a NUL-terminated name.
                    check(unsafe { libc::mkdirat(dir.as_raw_fd(), leaf.as_ptr(), 0o700) })
                        .map_err(io_fault(format!("creating {}", shown.display())))?;
                }
                self.dirs.push((parts, entry.mode));
            }
            EntryKind::File => {
                self.clear_leaf(&dir, &leaf, false, &shown)?;
                // SAFETY: a valid dir fd and a NUL-terminated name; O_EXCL|O_NOFOLLOW: a new
                // file, never through a link.
                let fd = check(unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        leaf.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600 as libc::c_uint,
                    )
                })
                .map_err(io_fault(format!("creating {}", shown.display())))?;
                // SAFETY: just opened, owned by nothing else.
                let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                self.file = Some((file, entry.size, entry.mode, entry.path.clone()));
                if entry.size == 0 {
                    self.close_file()?;
                }
            }
            EntryKind::Symlink => {
                let target = entry.target.as_deref().ok_or_else(|| {
                    TreeFault::Protocol(format!("symlink entry {:?} has no target", entry.path))
                })?;
                let target = cstring(target)?;
                self.clear_leaf(&dir, &leaf, false, &shown)?;
                // SAFETY: NUL-terminated strings and a valid dir fd.
                check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), leaf.as_ptr()) })
                    .map_err(io_fault(format!("creating the link {}", shown.display())))?;
            }
        }
        Ok(())
    }

    /// Bytes of the current file.
    pub fn data(&mut self, bytes: &[u8]) -> Result<(), TreeFault> {
        let Some((file, left, _, path)) = &mut self.file else {
            return Err(TreeFault::Protocol(
                "data came without a file entry".to_string(),
            ));
        };
        if bytes.len() as u64 > *left {
            return Err(TreeFault::Protocol(format!(
                "{} bytes of data came for {path:?}, which expects {left} more",
                bytes.len()
            )));
        }
        file.write_all(bytes)
            .map_err(io_fault(format!("writing {}", self.shown.display())))?;
        *left -= bytes.len() as u64;
        if *left == 0 {
            self.close_file()?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), TreeFault> {
        if let Some((file, _, mode, _)) = self.file.take() {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(io_fault(format!(
                    "setting the mode in {}",
                    self.shown.display()
                )))?;
        }
        Ok(())
    }

    /// The tree is complete: applies the directories' modes, deepest first.
    pub fn finish(mut self) -> Result<(), TreeFault> {
        if let Some((_, left, _, path)) = &self.file {
            return Err(TreeFault::Protocol(format!(
                "the tree ended while {left} bytes of {path:?} were still due"
            )));
        }
        let dirs = std::mem::take(&mut self.dirs);
        for (parts, mode) in dirs.iter().rev() {
            let dir = self.open_parent(parts)?;
            let leaf = cstring(parts.last().expect("the name is always there"))?;
            let fd = open_dir_at(&dir, &leaf).map_err(io_fault(format!(
                "opening {}",
                self.host_path(parts).display()
            )))?;
            File::from(fd)
                .set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(io_fault(format!(
                    "setting the mode of {}",
                    self.host_path(parts).display()
                )))?;
        }
        Ok(())
    }
}

impl TreeWriter {
    /// A writer for `<dir>/<name>`, `dir` an open directory (reached without following links,
    /// see [`open_beneath`]); `shown` is its path in messages.
    pub fn in_dir(dir: OwnedFd, shown: &Path, name: &str) -> Result<TreeWriter, TreeFault> {
        validate_relative_path(name).map_err(|e| TreeFault::BadPath(e.to_string()))?;
        Ok(TreeWriter {
            parent: dir,
            name: name.to_string(),
            shown: shown.join(name),
            file: None,
            dirs: Vec::new(),
        })
    }
}

/// Opens the directory `base` (the host's own choice, links followed), then each of `parts`
/// in it as a directory without ever following a link: a directory the guest can change
/// (the shared directory's exchange) is reached only as itself.
pub fn open_beneath(base: &Path, parts: &[&str]) -> Result<OwnedFd, TreeFault> {
    let c = CString::new(base.as_os_str().as_bytes())
        .map_err(|_| TreeFault::BadPath(format!("{base:?} contains a NUL byte")))?;
    // SAFETY: a NUL-terminated path.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
    .map_err(io_fault(format!("opening {}", base.display())))?;
    // SAFETY: just opened, owned by nothing else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut shown = base.to_path_buf();
    for part in parts {
        shown.push(part);
        dir = open_dir_at(&dir, &cstring(part)?).map_err(|e| not_a_dir(&shown, e))?;
    }
    Ok(dir)
}

/// Makes the directory `rel` beneath `base` (`mkdir -p`), never following a link on the
/// way: a link an earlier copy brought from a guest into `base` cannot redirect a later copy
/// out of it. `rel` must be relative without `..` (else it is the caller's own path, made
/// with [`std::fs::create_dir_all`]). Returns the directory's path.
pub fn make_dirs_beneath(base: &Path, rel: &Path) -> Result<PathBuf, TreeFault> {
    use std::path::Component;
    let target = base.join(rel);
    let parts: Option<Vec<&OsStr>> = rel
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let Some(parts) = parts else {
        std::fs::create_dir_all(&target)
            .map_err(io_fault(format!("creating {}", target.display())))?;
        return Ok(target);
    };
    std::fs::create_dir_all(base).map_err(io_fault(format!("creating {}", base.display())))?;
    let mut dir = open_beneath(base, &[])?;
    let mut shown = base.to_path_buf();
    for part in parts {
        shown.push(part);
        let name = CString::new(part.as_bytes())
            .map_err(|_| TreeFault::BadPath(format!("{shown:?} contains a NUL byte")))?;
        // SAFETY: a valid dir fd and a NUL-terminated name.
        let made = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
        if made < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io_fault(format!("creating {}", shown.display()))(e));
            }
        }
        dir = open_dir_at(&dir, &name).map_err(|e| not_a_dir(&shown, e))?;
    }
    Ok(target)
}

fn not_a_dir(at: &Path, e: io::Error) -> TreeFault {
    if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
        TreeFault::Io {
            context: format!(
                "{} is not a directory (a symlink is never followed)",
                at.display()
            ),
            source: e,
        }
    } else {
        TreeFault::Io {
            context: format!("opening {}", at.display()),
            source: e,
        }
    }
}

/// How deep a copied tree may go (each level holds a descriptor while it is copied).
pub const MAX_DEPTH: usize = 128;

/// Copies the tree at `<dir>/<name>` (`shown` is `dir`'s path in messages) into `writer`,
/// reading it as [`TreeWriter`] writes: each directory opened from its parent's descriptor
/// with `O_NOFOLLOW`, symlinks copied as links (never followed), a file opened with
/// `O_NOFOLLOW | O_NONBLOCK` (a FIFO swapped in cannot block the open) and read only when
/// the opened descriptor is a regular file, exactly the size it had then. FIFOs, sockets
/// and devices are never opened: they are left out, and their paths returned (the root
/// itself must be a file, a directory or a link). The tree may be changing under the copy
/// (the guest writes the shared directory): nothing outside it is read or written.
pub fn copy_tree(
    dir: &OwnedFd,
    shown: &Path,
    name: &str,
    writer: &mut TreeWriter,
) -> Result<Vec<PathBuf>, TreeFault> {
    let mut skipped = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let leaf = cstring(name)?;
    copy_walk(
        dir,
        &leaf,
        String::new(),
        &shown.join(name),
        0,
        writer,
        &mut skipped,
        &mut buf,
    )?;
    Ok(skipped)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
fn lstat_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid dir fd, a NUL-terminated name and a stat buffer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

#[allow(clippy::too_many_arguments)]
fn copy_walk(
    dir: &OwnedFd,
    leaf: &CString,
    rel: String,
    shown: &Path,
    depth: usize,
    writer: &mut TreeWriter,
    skipped: &mut Vec<PathBuf>,
    buf: &mut [u8],
) -> Result<(), TreeFault> {
    if depth > MAX_DEPTH {
        return Err(TreeFault::BadPath(format!(
            "{} is deeper than {MAX_DEPTH} levels",
            shown.display()
        )));
    }
    let st = lstat_at(dir, leaf).map_err(io_fault(format!("reading {}", shown.display())))?;
    let entry = |kind, size, target| Entry {
        path: rel.clone(),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size,
        target,
    };
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            let sub = open_dir_at(dir, leaf).map_err(|e| not_a_dir(shown, e))?;
            writer.entry(&entry(EntryKind::Dir, 0, None))?;
            let listing = format!("/proc/self/fd/{}", sub.as_raw_fd());
            let mut names = Vec::new();
            for item in std::fs::read_dir(&listing)
                .map_err(io_fault(format!("listing {}", shown.display())))?
            {
                let item = item.map_err(io_fault(format!("listing {}", shown.display())))?;
                names.push(item.file_name());
            }
            names.sort();
            for name in names {
                let child_shown = shown.join(&name);
                let name = utf8(&name, &child_shown)?;
                let child_rel = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                copy_walk(
                    &sub,
                    &cstring(&name)?,
                    child_rel,
                    &child_shown,
                    depth + 1,
                    writer,
                    skipped,
                    buf,
                )?;
            }
        }
        libc::S_IFREG => {
            let flags = libc::O_RDONLY
                | libc::O_NOFOLLOW
                | libc::O_NONBLOCK
                | libc::O_NOCTTY
                | libc::O_CLOEXEC;
            // SAFETY: a valid dir fd and a NUL-terminated name.
            let fd = check(unsafe { libc::openat(dir.as_raw_fd(), leaf.as_ptr(), flags) })
                .map_err(io_fault(format!("opening {}", shown.display())))?;
            // SAFETY: just opened, owned by nothing else.
            let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let meta = file
                .metadata()
                .map_err(io_fault(format!("reading {}", shown.display())))?;
            if !meta.file_type().is_file() {
                return Err(TreeFault::Io {
                    context: format!("{} changed while being copied", shown.display()),
                    source: io::Error::from_raw_os_error(libc::EAGAIN),
                });
            }
            let size = meta.len();
            writer.entry(&entry(EntryKind::File, size, None))?;
            let mut left = size;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = match io::Read::read(&mut file, &mut buf[..want]) {
                    Ok(0) => {
                        return Err(TreeFault::Io {
                            context: format!(
                                "{} shrank while being copied ({left} bytes missing)",
                                shown.display()
                            ),
                            source: io::Error::from(io::ErrorKind::UnexpectedEof),
                        })
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_fault(format!("reading {}", shown.display()))(e)),
                };
                writer.data(&buf[..n])?;
                left -= n as u64;
            }
        }
        libc::S_IFLNK => {
            // SAFETY: a valid dir fd, a NUL-terminated name and a buffer of its length.
            let n = check(unsafe {
                libc::readlinkat(
                    dir.as_raw_fd(),
                    leaf.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ) as libc::c_int
            })
            .map_err(io_fault(format!("reading the link {}", shown.display())))?;
            let target = utf8(OsStr::from_bytes(&buf[..n as usize]), shown)?;
            writer.entry(&entry(EntryKind::Symlink, 0, Some(target)))?;
        }
        _ if rel.is_empty() => {
            return Err(TreeFault::BadPath(format!(
                "{} is not a file, a directory or a symlink",
                shown.display()
            )))
        }
        _ => skipped.push(shown.to_path_buf()),
    }
    Ok(())
}

/// One member of a host tree to send: its entry, and for a file the host path to read.
pub struct HostEntry {
    pub entry: Entry,
    pub file: Option<PathBuf>,
}

/// The entries of the host tree at `root`, parents first, symlinks as links (never followed);
/// other kinds of files (FIFOs, sockets, devices) are left out. Every entry gets `uid`/`gid`.
pub fn read_host_tree(root: &Path, uid: u32, gid: u32) -> Result<Vec<HostEntry>, TreeFault> {
    let mut out = Vec::new();
    walk(root, String::new(), uid, gid, &mut out)?;
    Ok(out)
}

fn walk(
    path: &Path,
    rel: String,
    uid: u32,
    gid: u32,
    out: &mut Vec<HostEntry>,
) -> Result<(), TreeFault> {
    let meta =
        std::fs::symlink_metadata(path).map_err(io_fault(format!("reading {}", path.display())))?;
    let mode = meta.mode() & 0o7777;
    let entry = |kind, size, target| Entry {
        path: rel.clone(),
        kind,
        mode,
        uid,
        gid,
        size,
        target,
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path)
            .map_err(io_fault(format!("reading the link {}", path.display())))?;
        let target = utf8(target.as_os_str(), path)?;
        out.push(HostEntry {
            entry: entry(EntryKind::Symlink, 0, Some(target)),
            file: None,
        });
    } else if ft.is_dir() {
        out.push(HostEntry {
            entry: entry(EntryKind::Dir, 0, None),
            file: None,
        });
        let mut names = Vec::new();
        for item in
            std::fs::read_dir(path).map_err(io_fault(format!("listing {}", path.display())))?
        {
            let item = item.map_err(io_fault(format!("listing {}", path.display())))?;
            names.push(item.file_name());
        }
        names.sort();
        for name in names {
            let child = path.join(&name);
            let name = utf8(&name, &child)?;
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            walk(&child, rel, uid, gid, out)?;
        }
    } else if ft.is_file() {
        out.push(HostEntry {
            entry: entry(EntryKind::File, meta.len(), None),
            file: Some(path.to_path_buf()),
        });
    }
    Ok(())
}

fn utf8(name: &OsStr, path: &Path) -> Result<String, TreeFault> {
    name.to_str().map(str::to_string).ok_or_else(|| {
        TreeFault::BadPath(format!(
            "{} is not valid UTF-8, which the protocol's paths need",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ntng-tree-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn e(path: &str, kind: EntryKind, size: u64, target: Option<&str>) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o640 },
            uid: 0,
            gid: 0,
            size,
            target: target.map(Into::into),
        }
    }

    #[test]
    fn a_tree_is_written_with_modes_and_links_as_links() {
        let dir = scratch("write");
        let mut w = TreeWriter::new(&dir, "out").unwrap();
        w.entry(&e("", EntryKind::Dir, 0, None)).unwrap();
        w.entry(&e("a", EntryKind::File, 5, None)).unwrap();
        w.data(b"he").unwrap();
        w.data(b"llo").unwrap();
        w.entry(&e("sub", EntryKind::Dir, 0, None)).unwrap();
        w.entry(&e("sub/l", EntryKind::Symlink, 0, Some("/etc/passwd")))
            .unwrap();
        w.entry(&e("sub/empty", EntryKind::File, 0, None)).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(dir.join("out/a")).unwrap(), b"hello");
        let mode = std::fs::metadata(dir.join("out/a")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_link(dir.join("out/sub/l")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(std::fs::read(dir.join("out/sub/empty")).unwrap(), b"");
        // read back as entries, the same tree
        let entries = read_host_tree(&dir.join("out"), 0, 0).unwrap();
        let paths: Vec<_> = entries.iter().map(|h| h.entry.path.as_str()).collect();
        assert_eq!(paths, ["", "a", "sub", "sub/empty", "sub/l"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A guest that sends a link and then writes through it: nothing outside is touched.
    #[test]
    fn a_planted_link_is_never_followed() {
        let dir = scratch("planted");
        let outside = dir.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"safe").unwrap();
        let mut w = TreeWriter::new(&dir, "out").unwrap();
        w.entry(&e("", EntryKind::Dir, 0, None)).unwrap();
        w.entry(&e(
            "l",
            EntryKind::Symlink,
            0,
            Some(outside.to_str().unwrap()),
        ))
        .unwrap();
        let fault = w
            .entry(&e("l/victim", EntryKind::File, 4, None))
            .unwrap_err();
        assert!(fault.to_string().contains("is not a directory"), "{fault}");
        // a link at the file's own name is replaced, not written through
        w.entry(&e("v", EntryKind::Symlink, 0, Some("../outside/victim")))
            .unwrap();
        w.entry(&e("v", EntryKind::File, 4, None)).unwrap();
        w.data(b"evil").unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"safe");
        assert!(!std::fs::symlink_metadata(dir.join("out/v"))
            .unwrap()
            .file_type()
            .is_symlink());
        for bad in ["../x", "/etc/passwd", "a//b", "./a", "a/.."] {
            let fault = w.entry(&e(bad, EntryKind::File, 0, None)).unwrap_err();
            assert!(matches!(fault, TreeFault::BadPath(_)), "{bad}: {fault}");
        }
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"safe");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A hostile tree as a guest leaves it in the shared directory: links out of the tree
    /// (to /etc/shadow, to a host directory, to `..`), a FIFO, a socket, a setuid file.
    fn hostile_tree(dir: &Path, outside: &Path) {
        let t = dir.join("xchg").join("t");
        std::fs::create_dir_all(t.join("sub")).unwrap();
        std::fs::write(t.join("plain"), b"data").unwrap();
        std::fs::write(t.join("suid"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(t.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", t.join("shadow")).unwrap();
        std::os::unix::fs::symlink(outside, t.join("out")).unwrap();
        std::os::unix::fs::symlink("..", t.join("sub/up")).unwrap();
        let fifo = CString::new(t.join("sub/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::net::UnixListener::bind(t.join("sock")).unwrap();
    }

    fn copy(dir: &Path, dest: &str) -> Result<Vec<PathBuf>, TreeFault> {
        let from = open_beneath(dir, &["xchg"])?;
        let mut w = TreeWriter::new(dir, dest)?;
        let skipped = copy_tree(&from, &dir.join("xchg"), "t", &mut w)?;
        w.finish()?;
        Ok(skipped)
    }

    #[test]
    fn a_hostile_shared_tree_is_copied_without_leaving_it() {
        let dir = scratch("hostile");
        let outside = dir.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"safe").unwrap();
        hostile_tree(&dir, &outside);
        // the copy returns without blocking on the FIFO
        let skipped = copy(&dir, "dest").unwrap();
        let t = dir.join("xchg/t");
        assert_eq!(skipped, [t.join("sock"), t.join("sub/fifo")]);
        let d = dir.join("dest");
        assert_eq!(std::fs::read(d.join("plain")).unwrap(), b"data");
        // links are links, with their targets verbatim; nothing was read through them
        assert_eq!(
            std::fs::read_link(d.join("shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(std::fs::read_link(d.join("out")).unwrap(), outside);
        assert_eq!(
            std::fs::read_link(d.join("sub/up")).unwrap(),
            Path::new("..")
        );
        assert!(!d.join("sub/fifo").exists() && !d.join("sock").exists());
        // no setuid bit on the host
        let mode = std::fs::metadata(d.join("suid")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);

        // the guest turns the link into a directory with a file and copies again: the links
        // the first copy left in the target are replaced, never written through
        std::fs::remove_file(t.join("out")).unwrap();
        std::fs::create_dir(t.join("out")).unwrap();
        std::fs::write(t.join("out/victim"), b"evil").unwrap();
        std::fs::remove_file(t.join("shadow")).unwrap();
        std::fs::write(t.join("shadow"), b"evil").unwrap();
        copy(&dir, "dest").unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"safe");
        assert_eq!(std::fs::read(d.join("out/victim")).unwrap(), b"evil");
        assert!(!std::fs::symlink_metadata(d.join("out"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(d.join("shadow")).unwrap(), b"evil");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shared_tree_that_is_not_a_tree_is_refused_by_name() {
        let dir = scratch("refused");
        let outside = dir.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("t"), b"secret").unwrap();
        // the exchange directory itself replaced by a link out of the shared directory
        std::os::unix::fs::symlink(&outside, dir.join("xchg")).unwrap();
        let fault = copy(&dir, "dest").unwrap_err();
        assert!(
            fault
                .to_string()
                .contains("xchg is not a directory (a symlink is never followed)"),
            "{fault}"
        );
        assert!(!dir.join("dest").exists());
        // the root of the copy a FIFO: refused, naming it, without blocking
        std::fs::remove_file(dir.join("xchg")).unwrap();
        std::fs::create_dir(dir.join("xchg")).unwrap();
        let fifo = CString::new(dir.join("xchg/t").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let fault = copy(&dir, "dest").unwrap_err();
        assert!(
            fault
                .to_string()
                .contains("xchg/t is not a file, a directory or a symlink"),
            "{fault}"
        );
        // a tree deeper than the bound
        std::fs::remove_file(dir.join("xchg/t")).unwrap();
        let mut deep = dir.join("xchg/t");
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let fault = copy(&dir, "dest").unwrap_err();
        assert!(
            fault.to_string().contains("deeper than 128 levels"),
            "{fault}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_target_directory_is_made_without_following_links() {
        let dir = scratch("beneath");
        let outside = dir.join("outside");
        std::fs::create_dir(&outside).unwrap();
        let out = dir.join("out");
        let made = make_dirs_beneath(&out, Path::new("a/./b")).unwrap();
        assert_eq!(made, out.join("a/./b"));
        assert!(out.join("a/b").is_dir());
        // an earlier copy left a link in the output directory
        std::os::unix::fs::symlink(&outside, out.join("a/l")).unwrap();
        let fault = make_dirs_beneath(&out, Path::new("a/l/c")).unwrap_err();
        assert!(
            fault
                .to_string()
                .contains("a/l is not a directory (a symlink is never followed)"),
            "{fault}"
        );
        assert!(!outside.join("c").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_that_does_not_fit_its_entry_is_a_protocol_fault() {
        let dir = scratch("sizes");
        let mut w = TreeWriter::new(&dir, "f").unwrap();
        assert!(matches!(w.data(b"x"), Err(TreeFault::Protocol(_))));
        w.entry(&e("", EntryKind::File, 2, None)).unwrap();
        assert!(matches!(w.data(b"xyz"), Err(TreeFault::Protocol(_))));
        w.data(b"x").unwrap();
        assert!(matches!(
            w.entry(&e("", EntryKind::File, 0, None)),
            Err(TreeFault::Protocol(_))
        ));
        assert!(matches!(w.finish(), Err(TreeFault::Protocol(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
