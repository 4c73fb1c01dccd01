//! GET: send the tree at a path. A failure part-way (a file vanished, a name that is not
//! UTF-8) is an ERROR frame in place of the rest of the tree.

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use agent_protocol::{encode_json, Entry, EntryKind, Get, Kind, DATA_CHUNK};

use super::{describe, Anchor, DIR_FLAGS};
use crate::conn::{Conn, End};
use crate::sys;

/// How deep a tree may be: the walk recurses, and a thread's stack is finite.
const MAX_DEPTH: usize = 256;

enum Stop {
    /// The connection broke: it ends.
    Conn(End),
    /// The file system said no: ERROR, the connection goes on.
    Fs(String),
}

impl From<End> for Stop {
    fn from(e: End) -> Stop {
        Stop::Conn(e)
    }
}

pub fn send(conn: &mut Conn, req: Get) -> Result<(), End> {
    let result = Anchor::new(&req.path, false)
        .map_err(Stop::Fs)
        .and_then(|anchor| {
            let (dir, name) = anchor.locate(&[]).map_err(|e| Stop::Fs(describe("", &e)))?;
            let mut buf = vec![0u8; DATA_CHUNK];
            walk(conn, &dir, &name, String::new(), 0, &mut buf)
        });
    match result {
        Ok(()) => conn.send(Kind::End, b""),
        Err(Stop::Fs(why)) => conn.send_error(format!("GET {}: {why}", req.path)),
        Err(Stop::Conn(e)) => Err(e),
    }
}

fn walk(
    conn: &mut Conn,
    dir: &OwnedFd,
    name: &CStr,
    rel: String,
    depth: usize,
    buf: &mut [u8],
) -> Result<(), Stop> {
    if depth > MAX_DEPTH {
        return Err(Stop::Fs(format!("{rel:?}: deeper than {MAX_DEPTH} levels")));
    }
    let fs = |e: std::io::Error| Stop::Fs(describe(&rel, &e));
    let st = sys::lstatat(dir.as_raw_fd(), name).map_err(fs)?;
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
            let sub = if name.is_empty() {
                dir.try_clone().map_err(fs)?
            } else {
                sys::openat(dir.as_raw_fd(), name, DIR_FLAGS, 0).map_err(fs)?
            };
            conn.send_encoded(encode_json(Kind::Entry, &entry(EntryKind::Dir, 0, None)))?;
            for child in sys::read_dir_names(&sub).map_err(fs)? {
                let child_name = String::from_utf8(child).map_err(|e| {
                    Stop::Fs(format!(
                        "{rel:?}: a name that is not UTF-8: {:?}",
                        e.as_bytes()
                    ))
                })?;
                let child_rel = if rel.is_empty() {
                    child_name.clone()
                } else {
                    format!("{rel}/{child_name}")
                };
                let cname = sys::cname(&child_name).map_err(fs)?;
                walk(conn, &sub, &cname, child_rel, depth + 1, buf)?;
            }
        }
        libc::S_IFREG => {
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
            let fd = sys::openat(dir.as_raw_fd(), name, flags, 0).map_err(fs)?;
            let st = sys::fstat(fd.as_raw_fd()).map_err(fs)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(Stop::Fs(format!("{rel:?}: changed while being read")));
            }
            let size = st.st_size as u64;
            conn.send_encoded(encode_json(
                Kind::Entry,
                &entry(EntryKind::File, size, None),
            ))?;
            send_data(conn, File::from(fd), size, buf).map_err(|e| match e {
                Stop::Fs(why) => Stop::Fs(format!("{rel:?}: {why}")),
                other => other,
            })?;
        }
        libc::S_IFLNK => {
            let target = sys::readlinkat(dir.as_raw_fd(), name).map_err(fs)?;
            let target = String::from_utf8(target).map_err(|e| {
                Stop::Fs(format!(
                    "{rel:?}: a symlink target that is not UTF-8: {:?}",
                    e.as_bytes()
                ))
            })?;
            conn.send_encoded(encode_json(
                Kind::Entry,
                &entry(EntryKind::Symlink, 0, Some(target)),
            ))?;
        }
        // Sockets, FIFOs and devices are not copied; the root must be one of the above.
        _ if rel.is_empty() => return Err(Stop::Fs("not a file, directory or symlink".to_owned())),
        _ => {}
    }
    Ok(())
}

/// Exactly `size` bytes of the file as DATA frames.
fn send_data(conn: &mut Conn, mut file: File, size: u64, buf: &mut [u8]) -> Result<(), Stop> {
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Stop::Fs(format!(
                    "shrank while being read ({left} bytes missing)"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Stop::Fs(e.to_string())),
        };
        conn.send(Kind::Data, &buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}
