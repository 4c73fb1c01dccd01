//! The listening sockets: AF_VSOCK (by hand through libc) and unix.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::sys;

pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

impl Listener {
    pub fn vsock(port: u32) -> io::Result<Listener> {
        // SAFETY: plain socket syscalls; the address is a valid sockaddr_vm for its length.
        unsafe {
            let fd = sys::cvt(libc::socket(
                libc::AF_VSOCK,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
            ))?;
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_vm = std::mem::zeroed();
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_port = port;
            addr.svm_cid = libc::VMADDR_CID_ANY;
            sys::cvt(libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            ))?;
            sys::cvt(libc::listen(fd.as_raw_fd(), 64))?;
            Ok(Listener::Vsock(fd))
        }
    }

    /// Listens on `path`, replacing a stale socket left there.
    pub fn unix(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)?;
            }
        }
        Ok(Listener::Unix(UnixListener::bind(path)?))
    }

    /// The next connection, as an fd, and a name for the log.
    pub fn accept(&self) -> io::Result<(OwnedFd, String)> {
        match self {
            Listener::Vsock(fd) => {
                // SAFETY: a zeroed sockaddr_vm and its length are valid out-parameters.
                let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
                let conn = sys::cvt(unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        (&mut addr as *mut libc::sockaddr_vm).cast(),
                        &mut len,
                        libc::SOCK_CLOEXEC,
                    )
                })?;
                // SAFETY: accept4 returned a fresh fd.
                let conn = unsafe { OwnedFd::from_raw_fd(conn) };
                Ok((conn, format!("vsock {}:{}", addr.svm_cid, addr.svm_port)))
            }
            Listener::Unix(l) => {
                let (stream, _) = l.accept()?;
                Ok((OwnedFd::from(stream), "unix".to_owned()))
            }
        }
    }
}
