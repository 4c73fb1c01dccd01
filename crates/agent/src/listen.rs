//! The listening sockets: AF_VSOCK and TCP (set up by hand through libc), and unix.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::args::Endpoint;
use crate::sys;

pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
    Tcp(TcpListener),
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

    pub fn endpoint(endpoint: &Endpoint) -> io::Result<Listener> {
        match endpoint {
            Endpoint::Unix(path) => Listener::unix(path),
            Endpoint::Tcp(addr) => Listener::tcp(*addr),
        }
    }

    /// Listens on `addr` with `IP_FREEBIND`: the address need not be configured yet (the
    /// systemd guest's agent may start before its NIC has 10.0.2.15), connections arrive
    /// once it is. `SO_REUSEADDR` lets a restarted agent bind again at once.
    pub fn tcp(addr: SocketAddr) -> io::Result<Listener> {
        let family = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: plain socket syscalls; each address is a valid sockaddr for its length.
        unsafe {
            let fd = sys::cvt(libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
            ))?;
            let fd = OwnedFd::from_raw_fd(fd);
            sys::set_int_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            sys::set_int_option(&fd, libc::SOL_IP, libc::IP_FREEBIND, 1)?;
            let ret = match addr {
                SocketAddr::V4(v4) => {
                    let mut sa: libc::sockaddr_in = std::mem::zeroed();
                    sa.sin_family = libc::AF_INET as libc::sa_family_t;
                    sa.sin_port = v4.port().to_be();
                    sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
                SocketAddr::V6(v6) => {
                    let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sa.sin6_port = v6.port().to_be();
                    sa.sin6_addr.s6_addr = v6.ip().octets();
                    sa.sin6_flowinfo = v6.flowinfo();
                    sa.sin6_scope_id = v6.scope_id();
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            };
            sys::cvt(ret)?;
            sys::cvt(libc::listen(fd.as_raw_fd(), 64))?;
            Ok(Listener::Tcp(TcpListener::from(fd)))
        }
    }

    /// What the log calls this listener: for TCP the bound address (port 0 chose a port).
    pub fn name(&self, endpoint: &Endpoint) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("tcp:{addr}"),
                Err(_) => endpoint.to_string(),
            },
            _ => endpoint.to_string(),
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
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept()?;
                // Frames go out as header and body writes: without this, Nagle's algorithm
                // holds the second one for the peer's delayed ACK.
                stream.set_nodelay(true)?;
                Ok((OwnedFd::from(stream), format!("tcp {peer}")))
            }
        }
    }
}
