//! The byte stream a shell talks over, whatever carries it: a unix socket (QEMU's
//! virtconsole, a hybrid vsock, a socket pair) or an `AF_VSOCK` socket.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected, bidirectional byte stream.
pub trait ByteStream: Read + Write + Send {
    /// How long one read may block (`None`: forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Shuts both directions down, waking a reader blocked on another handle.
    fn shutdown(&self) -> io::Result<()>;
    /// A second handle on the same stream.
    fn try_clone_stream(&self) -> io::Result<Stream>;
    /// Sends what fits without blocking: the bytes taken, or `WouldBlock` when none fit.
    fn try_send(&mut self, data: &[u8]) -> io::Result<usize>;
}

/// send(2) with `MSG_DONTWAIT`: never blocks, whatever the fd's mode.
fn send_dontwait(fd: std::os::fd::RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: a valid fd and a buffer of the length given.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A boxed [`ByteStream`].
pub type Stream = Box<dyn ByteStream>;

impl ByteStream for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }

    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, std::net::Shutdown::Both)
    }

    fn try_clone_stream(&self) -> io::Result<Stream> {
        Ok(Box::new(self.try_clone()?))
    }

    fn try_send(&mut self, data: &[u8]) -> io::Result<usize> {
        send_dontwait(std::os::fd::AsRawFd::as_raw_fd(self), data)
    }
}

impl From<UnixStream> for Stream {
    fn from(stream: UnixStream) -> Stream {
        Box::new(stream)
    }
}

/// A connected stream socket of any family (`AF_VSOCK`): reads, writes, timeouts and
/// shutdown are the generic socket calls.
pub struct SocketStream {
    fd: OwnedFd,
}

impl SocketStream {
    /// Wraps a connected stream socket.
    pub fn new(fd: OwnedFd) -> Self {
        SocketStream { fd }
    }

    fn call(ret: libc::ssize_t) -> io::Result<usize> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }
}

impl AsFd for SocketStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Read for SocketStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: a valid fd and a buffer of `buf.len()` writable bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        Self::call(n)
    }
}

impl Write for SocketStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: a valid fd and `buf.len()` readable bytes; MSG_NOSIGNAL: EPIPE, no SIGPIPE.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        Self::call(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ByteStream for SocketStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            // a zero timeval means "forever" to the kernel: round up to 1 µs
            Some(t) => libc::timeval {
                tv_sec: t.as_secs() as libc::time_t,
                tv_usec: (t.subsec_micros().max(u32::from(t.is_zero()))) as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: a valid fd and a timeval of the size given.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn shutdown(&self) -> io::Result<()> {
        // SAFETY: a valid fd.
        if unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn try_clone_stream(&self) -> io::Result<Stream> {
        // SAFETY: a valid fd; the duplicate is owned by the new value.
        let fd = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(Box::new(SocketStream::new(unsafe {
            OwnedFd::from_raw_fd(fd)
        })))
    }

    fn try_send(&mut self, data: &[u8]) -> io::Result<usize> {
        send_dontwait(self.fd.as_raw_fd(), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generic socket calls on a socket pair: the same as a `UnixStream`'s.
    #[test]
    fn a_socket_stream_reads_writes_times_out_and_shuts_down() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut ours = SocketStream::new(OwnedFd::from(a));
        let mut theirs = b;
        ours.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 5];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping\n");
        ours.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let e = ours.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        let mut clone = ours.try_clone_stream().unwrap();
        theirs.write_all(b"pong").unwrap();
        assert_eq!(clone.read(&mut buf).unwrap(), 4);
        ours.shutdown().unwrap();
        assert_eq!(theirs.read(&mut buf).unwrap(), 0);
    }
}
