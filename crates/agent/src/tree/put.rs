//! PUT: write the tree that follows the request at its path.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use agent_protocol::{validate_relative_path, Entry, EntryKind, Kind, Put};

use super::{describe, Anchor, DIR_FLAGS};
use crate::conn::{Conn, End};
use crate::sys;

/// Reads the whole tree (always, so the stream stays in step), writes it while nothing has
/// failed, then answers DONE or ERROR with the first failure.
pub fn receive(conn: &mut Conn, req: Put) -> Result<(), End> {
    let mut failure = None;
    let mut writer = match Anchor::new(&req.path, true) {
        Ok(anchor) => Some(Writer::new(anchor)),
        Err(e) => {
            failure = Some(e);
            None
        }
    };
    loop {
        let frame = conn.recv()?;
        let step = match frame.kind {
            Kind::Entry => {
                let entry: Entry = frame.json()?;
                writer.as_mut().map(|w| w.entry(entry))
            }
            Kind::Data => writer.as_mut().map(|w| w.data(&frame.body)),
            Kind::End => {
                if let Some(w) = writer.as_mut() {
                    if let Err(e) = w.finish() {
                        failure.get_or_insert(e);
                    }
                }
                break;
            }
            other => {
                return Err(End::Broken(format!(
                    "unexpected {other} frame in a PUT tree"
                )))
            }
        };
        if let Some(Err(e)) = step {
            failure = Some(e);
            // Stop writing; keep reading to the END.
            writer = None;
        }
    }
    match failure {
        None => conn.send(Kind::Done, b""),
        Some(why) => conn.send_error(format!("PUT {}: {why}", req.path)),
    }
}

struct OpenFile {
    path: String,
    file: File,
    remaining: u64,
}

struct Writer {
    anchor: Anchor,
    seen_root: bool,
    file: Option<OpenFile>,
    /// Directories' attributes, applied at the end (a read-only directory must still be
    /// written into first).
    dirs: Vec<(String, u32, u32, u32)>,
}

impl Writer {
    fn new(anchor: Anchor) -> Writer {
        Writer {
            anchor,
            seen_root: false,
            file: None,
            dirs: Vec::new(),
        }
    }

    fn end_file(&mut self) -> Result<(), String> {
        match self.file.take() {
            Some(f) if f.remaining > 0 => Err(format!(
                "{:?}: the DATA ended {} bytes short",
                f.path, f.remaining
            )),
            _ => Ok(()),
        }
    }

    fn entry(&mut self, entry: Entry) -> Result<(), String> {
        self.end_file()?;
        let parts = validate_relative_path(&entry.path).map_err(|e| e.to_string())?;
        match (self.seen_root, parts.is_empty()) {
            (false, false) => {
                return Err(format!(
                    "{:?}: the first entry must be the root \"\"",
                    entry.path
                ))
            }
            (true, true) => return Err("a second root entry".to_owned()),
            _ => self.seen_root = true,
        }
        let (dir, name) = self
            .anchor
            .locate(&parts)
            .map_err(|e| describe(&entry.path, &e))?;
        let at = |e: io::Error| describe(&entry.path, &e);
        match entry.kind {
            EntryKind::Dir => {
                if !name.is_empty() {
                    match sys::mkdirat(dir.as_raw_fd(), &name, 0o700) {
                        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(at(e)),
                        _ => {}
                    }
                    // An existing symlink or file there is refused here.
                    sys::openat(dir.as_raw_fd(), &name, DIR_FLAGS, 0).map_err(at)?;
                }
                self.dirs
                    .push((entry.path, entry.mode, entry.uid, entry.gid));
            }
            EntryKind::File => {
                let flags = libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_TRUNC
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK;
                let fd = sys::openat(dir.as_raw_fd(), &name, flags, 0o600).map_err(at)?;
                let st = sys::fstat(fd.as_raw_fd()).map_err(at)?;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(format!(
                        "{:?}: not a regular file in the destination",
                        entry.path
                    ));
                }
                chown(|| sys::fchown(fd.as_raw_fd(), entry.uid, entry.gid)).map_err(at)?;
                sys::fchmod(fd.as_raw_fd(), entry.mode & 0o7777).map_err(at)?;
                self.file = Some(OpenFile {
                    path: entry.path,
                    file: File::from(fd),
                    remaining: entry.size,
                });
            }
            EntryKind::Symlink => {
                let target = entry
                    .target
                    .as_deref()
                    .ok_or_else(|| format!("{:?}: a symlink entry without a target", entry.path))?;
                let target = sys::cname(target).map_err(at)?;
                replace_symlink(&dir, &name, &target).map_err(at)?;
                chown(|| sys::lchownat(dir.as_raw_fd(), &name, entry.uid, entry.gid))
                    .map_err(at)?;
            }
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(f) = self.file.as_mut() else {
            return Err("DATA outside a file entry".to_owned());
        };
        if bytes.len() as u64 > f.remaining {
            return Err(format!("{:?}: more DATA than the entry's size", f.path));
        }
        f.file.write_all(bytes).map_err(|e| describe(&f.path, &e))?;
        f.remaining -= bytes.len() as u64;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        self.end_file()?;
        if !self.seen_root {
            return Err("the tree has no entries".to_owned());
        }
        for (path, mode, uid, gid) in self.dirs.iter().rev() {
            let parts = validate_relative_path(path).map_err(|e| e.to_string())?;
            let dir: OwnedFd = self
                .anchor
                .open_dir(&parts)
                .map_err(|e| describe(path, &e))?;
            chown(|| sys::fchown(dir.as_raw_fd(), *uid, *gid)).map_err(|e| describe(path, &e))?;
            sys::fchmod(dir.as_raw_fd(), mode & 0o7777).map_err(|e| describe(path, &e))?;
        }
        Ok(())
    }
}

/// Creates the symlink, replacing a symlink or file already there (never a directory).
fn replace_symlink(
    dir: &OwnedFd,
    name: &std::ffi::CStr,
    target: &std::ffi::CStr,
) -> io::Result<()> {
    match sys::symlinkat(target, dir.as_raw_fd(), name) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let st = sys::lstatat(dir.as_raw_fd(), name)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            sys::unlinkat(dir.as_raw_fd(), name)?;
            sys::symlinkat(target, dir.as_raw_fd(), name)
        }
        other => other,
    }
}

/// Ownership is applied when the agent may change it: an unprivileged agent (the protocol
/// tests) keeps its own.
fn chown(op: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    match op() {
        // SAFETY: geteuid cannot fail.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && unsafe { libc::geteuid() } != 0 => {
            Ok(())
        }
        other => other,
    }
}
