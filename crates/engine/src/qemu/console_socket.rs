//! QEMU's end of the backdoor's console socket, and the chunk the backdoor paces its output by.
//!
//! QEMU drops what a virtio console writes while its socket to the driver is full, so the
//! backdoor sends long outputs in chunks, each after the driver acknowledged the one before
//! ([`crate::transport::shell`]): a chunk must fit that socket's send buffer, and every chunk
//! costs the guest a round trip. QEMU makes its socket with the kernel's default buffer
//! (`net.core.wmem_default`, 208 KiB), which allows 32 KiB chunks: a 1 MB output then waits
//! for 30 acknowledgements, most of its time under TCG. The driver enlarges that buffer through
//! a copy of QEMU's descriptor (`pidfd_getfd`, the way a debugger reaches into its child) and
//! paces by what it got. Where that is not allowed, the chunk stays [`ACK_EVERY`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::transport::shell::ACK_EVERY;

/// The send buffer asked for: past `net.core.wmem_max` only with `CAP_NET_ADMIN`
/// (`SO_SNDBUFFORCE`), else up to that maximum. The kernel doubles what it is given.
pub const WANTED_SEND_BUFFER: usize = 16 << 20;

/// The largest pacing chunk: the guest's `dd` holds one chunk in memory.
pub const MAX_CHUNK: usize = 4 << 20;

/// The pacing chunk for QEMU's send buffer of `bytes`: an eighth of it (the kernel charges a
/// socket for each write's buffers, about twice the data of the console's 2 KiB writes, and
/// the chunk comes after up to 2 KiB of head), as a power of two between [`ACK_EVERY`] and
/// [`MAX_CHUNK`].
pub fn pace_chunk(send_buffer: usize) -> usize {
    let eighth = send_buffer / 8;
    if eighth < ACK_EVERY {
        return ACK_EVERY;
    }
    (1usize << eighth.ilog2()).min(MAX_CHUNK)
}

/// Enlarges the send buffer of QEMU's end of `ours` (a connection QEMU made to the driver's
/// listening socket) and returns the pacing chunk it allows; [`ACK_EVERY`] when QEMU's socket
/// could not be reached or changed.
pub fn enlarge(ours: &UnixStream) -> usize {
    match enlarge_peer_send_buffer(ours) {
        Ok(bytes) => pace_chunk(bytes),
        Err(_) => ACK_EVERY,
    }
}

/// Finds the peer of `ours` among its process's descriptors (the socket connected to the
/// address `ours` was accepted on), sets its send buffer, and returns the size it has now.
fn enlarge_peer_send_buffer(ours: &UnixStream) -> io::Result<usize> {
    let listening_on = socket_name(ours.as_raw_fd(), libc::getsockname)?;
    if listening_on.iter().all(|&c| c == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the connection was not accepted on a named socket",
        ));
    }
    let pid = peer_pid(ours)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = owned(pidfd)?;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(target_fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number of that process and flags,
        // and returns a new descriptor of ours (close-on-exec) or -1.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
        let Ok(copy) = owned(copy) else { continue };
        if socket_name(copy.as_raw_fd(), libc::getpeername).ok() != Some(listening_on.clone()) {
            continue;
        }
        let wanted = WANTED_SEND_BUFFER as libc::c_int;
        if set_int(&copy, libc::SO_SNDBUFFORCE, wanted).is_err() {
            set_int(&copy, libc::SO_SNDBUF, wanted)?;
        }
        return get_int(&copy, libc::SO_SNDBUF).map(|b| b as usize);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no socket of the peer is connected to this address",
    ))
}

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

type NameCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The unix address of `fd`'s own end (`getsockname`) or its peer's (`getpeername`).
fn socket_name(fd: RawFd, call: NameCall) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a writable sockaddr_un of `len` bytes.
    if unsafe { call(fd, (&raw mut addr).cast(), &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let path_len = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let path = &addr.sun_path[..path_len.min(addr.sun_path.len())];
    Ok(path.iter().map(|&c| c as u8).collect())
}

fn peer_pid(stream: &UnixStream) -> io::Result<libc::pid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred is a writable ucred of `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

fn set_int(fd: &OwnedFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: value is a c_int of the size given.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_int(fd: &OwnedFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value is a writable c_int of `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_chunk_is_an_eighth_of_the_buffer_as_a_power_of_two_within_bounds() {
        assert_eq!(pace_chunk(0), ACK_EVERY);
        assert_eq!(pace_chunk(212_992), ACK_EVERY);
        assert_eq!(pace_chunk(425_984), ACK_EVERY);
        assert_eq!(pace_chunk(8 << 20), 1 << 20);
        assert_eq!(pace_chunk((8 << 20) - 1), 512 << 10);
        assert_eq!(pace_chunk(32 << 20), MAX_CHUNK);
        assert_eq!(pace_chunk(usize::MAX), MAX_CHUNK);
    }

    /// A child process connects to a listener, as QEMU does; the driver enlarges the child's
    /// socket, which its own end then reports.
    #[test]
    fn the_peer_process_socket_is_found_and_enlarged() {
        let dir = std::env::temp_dir().join(format!("ntng-console-socket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("shell");
        let listener = UnixListener::bind(&path).unwrap();
        // the peer: a python that connects, prints its send buffer when told, and waits
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
             sys.stdin.readline()\nprint(s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))\n",
            path.to_str().unwrap()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (ours, _) = listener.accept().unwrap();
        let bytes = enlarge_peer_send_buffer(&ours).unwrap();
        assert!(bytes > 212_992, "{bytes}");
        use std::io::{BufRead, Write};
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        child.wait().unwrap();
        assert_eq!(line.trim().parse::<usize>().unwrap(), bytes);
        assert!(pace_chunk(bytes) >= ACK_EVERY);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_peer_out_of_reach_leaves_the_default_chunk() {
        // the peer is this process, whose socket pair has no listening address
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(enlarge(&a), ACK_EVERY);
    }
}
