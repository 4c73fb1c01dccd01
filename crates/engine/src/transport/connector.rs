//! Connectors: how a machine's shell stream is reached. The shell protocol
//! ([`super::shell`]) runs over whatever stream a connector yields:
//!
//! - [`AcceptUnix`]: accept one connection on a listening unix socket (QEMU's virtconsole
//!   chardev connects to the driver);
//! - [`ConnectUnix`]: connect to a unix socket;
//! - [`HybridVsock`]: connect to a VMM's unix socket and ask for a guest port with
//!   `CONNECT <port>\n`, answered by `OK <host port>\n` (Firecracker, Cloud Hypervisor,
//!   `vhost-device-vsock`);
//! - [`Vsock`]: an `AF_VSOCK` connection to `<cid>:<port>`;
//! - [`Ready`]: a stream that is connected already (a socket pair, a stream accepted at launch).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use super::stream::{SocketStream, Stream};
use crate::interrupt::{self, Deadline};
use crate::process::ChildProcess;

/// How getting a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The machine's process exited first.
    #[error("the machine's process exited ({0})")]
    Exited(ExitStatus),
    /// Nothing connected or answered before the deadline.
    #[error("no connection in time")]
    TimedOut,
    /// SIGINT/SIGTERM/global timeout while waiting.
    #[error("interrupted")]
    Interrupted,
    /// The other side answered the prelude with something else than `OK`.
    #[error("the connection was refused: {0}")]
    Refused(String),
    /// The guest failed, as the connector describes it (reported with the console's tail).
    #[error("{0}")]
    Guest(String),
    /// The host lacks something the connection needs (a program, a kernel module).
    #[error("{0}")]
    Host(String),
    /// A socket error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        ConnectError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Yields the byte stream of a machine's shell.
pub trait Connector: Send {
    /// A stream to the guest's shell, waiting until `deadline`.
    fn connect(&mut self, deadline: Deadline) -> Result<Stream, ConnectError>;
    /// True when the stream is there already: [`Connector::connect`] does not wait (the
    /// machine installs its shell at launch, so raw bytes can be sent before the handshake).
    fn is_ready(&self) -> bool {
        false
    }
    /// True when every handshake needs a new stream (a vsock, an `nsenter` shell); false when
    /// the one stream carries the guest's next shell too (a virtconsole across a reboot).
    /// A stream that disconnects before its handshake is then tried again until the deadline.
    fn reconnects(&self) -> bool {
        false
    }
    /// The stream last returned did not reach the handshake: end what came with it.
    fn abandon(&mut self) {}
    /// False when what carries the stream stops working once the guest resets its devices
    /// (a reboot): the machine then uses its backdoor until its next launch.
    fn survives_guest_reset(&self) -> bool {
        true
    }
    /// What carries the stream, for the log ("connected ... over hybrid vsock").
    fn describe(&self) -> String {
        "a connected stream".to_string()
    }
}

/// The exit status of the machine's process, when it exited.
pub type Alive<'a> = &'a (dyn Fn() -> Option<ExitStatus> + Sync);

/// Waits until someone connects to `listener`, or `exited` says the process that should have
/// ended, or `deadline` passes.
pub fn accept_unix(
    listener: &UnixListener,
    exited: Alive<'_>,
    deadline: Deadline,
) -> Result<UnixStream, ConnectError> {
    loop {
        let mut fds = [libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, deadline.slice().as_millis() as i32) };
        if n > 0 {
            return listener
                .accept()
                .map(|(stream, _)| stream)
                .map_err(|e| ConnectError::io("accepting", e));
        }
        if let Some(status) = exited() {
            return Err(ConnectError::Exited(status));
        }
        if interrupt::check().is_err() {
            return Err(ConnectError::Interrupted);
        }
        if deadline.expired() {
            return Err(ConnectError::TimedOut);
        }
    }
}

/// Accepts one connection on a listening unix socket while the machine's process runs.
pub struct AcceptUnix {
    listener: UnixListener,
    process: Arc<ChildProcess>,
}

impl AcceptUnix {
    /// Accepts on `listener` while `process` runs.
    pub fn new(listener: UnixListener, process: Arc<ChildProcess>) -> Self {
        AcceptUnix { listener, process }
    }
}

impl Connector for AcceptUnix {
    fn connect(&mut self, deadline: Deadline) -> Result<Stream, ConnectError> {
        let process = self.process.clone();
        let exited = move || process.exit_status();
        accept_unix(&self.listener, &exited, deadline).map(Stream::from)
    }
}

/// A stream that is connected already: each connect hands out another handle on it.
pub struct Ready {
    stream: Stream,
}

impl Ready {
    /// Hands out `stream`.
    pub fn new(stream: impl Into<Stream>) -> Self {
        Ready {
            stream: stream.into(),
        }
    }
}

impl Connector for Ready {
    fn connect(&mut self, _deadline: Deadline) -> Result<Stream, ConnectError> {
        self.stream
            .try_clone_stream()
            .map_err(|e| ConnectError::io("the shell stream", e))
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// How long to wait before trying a refused or dropped connection again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Calls `try_once` until it yields a stream, pausing between tries, until the deadline or an
/// interruption.
fn retry_until<T>(
    deadline: Deadline,
    mut try_once: impl FnMut() -> Result<Option<T>, ConnectError>,
) -> Result<T, ConnectError> {
    loop {
        if let Some(stream) = try_once()? {
            return Ok(stream);
        }
        if interrupt::check().is_err() {
            return Err(ConnectError::Interrupted);
        }
        if deadline.expired() {
            return Err(ConnectError::TimedOut);
        }
        std::thread::sleep(RETRY_PAUSE.min(deadline.slice()));
    }
}

/// Connects to a unix socket. A socket that is not there yet and a refused connection are
/// tried again until the deadline.
pub struct ConnectUnix {
    path: PathBuf,
}

impl ConnectUnix {
    /// A plain connection to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ConnectUnix { path: path.into() }
    }
}

/// One unix connection to `path`: `Ok(None)` when it should be tried again (not there yet,
/// refused).
fn connect_unix_once(path: &Path) -> Result<Option<UnixStream>, ConnectError> {
    match UnixStream::connect(path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(ConnectError::io(
            format!("connecting to {}", path.display()),
            e,
        )),
    }
}

impl Connector for ConnectUnix {
    fn connect(&mut self, deadline: Deadline) -> Result<Stream, ConnectError> {
        retry_until(deadline, || connect_unix_once(&self.path)).map(Into::into)
    }

    fn reconnects(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("the unix socket {}", self.path.display())
    }
}

/// A hybrid-vsock connection (Firecracker, Cloud Hypervisor, `vhost-device-vsock`): connect
/// to the VMM's unix socket at `uds_path`, send `CONNECT <port>\n`, read one line: `OK
/// <anything>\n` is a connection to guest port `port`. Anything else, or the connection
/// dropped, means nothing listens on that port in the guest yet: tried again until the
/// deadline, which then reports the last answer as [`ConnectError::Refused`].
pub struct HybridVsock {
    /// The VMM's unix socket.
    pub uds_path: PathBuf,
    /// The guest's vsock port.
    pub port: u32,
}

/// The longest answer line to `CONNECT` read before it counts as garbage.
const MAX_ANSWER: usize = 200;
/// How long the first `CONNECT` waits for its answer before it is dropped and tried again;
/// each unanswered try doubles it, up to [`ANSWER_WAIT_MAX`]. A VMM's socket may take a
/// `CONNECT` and never answer it: vhost-device-vsock 0.3.0 loses a request that reaches it
/// while the guest's vsock queues are not ready, and Firecracker holds one until the guest
/// answers. A fresh connection is a fresh request.
const ANSWER_WAIT_FIRST: Duration = Duration::from_millis(500);
/// See [`ANSWER_WAIT_FIRST`].
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(4);

/// What one `CONNECT` try came to.
enum Answer {
    Connected(UnixStream),
    /// Not (yet): the answer line, when there was one.
    Again(Option<String>),
    /// No answer within the try's wait.
    Unanswered,
}

impl HybridVsock {
    /// A connection to guest port `port` through the VMM's socket at `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>, port: u32) -> Self {
        HybridVsock {
            uds_path: uds_path.into(),
            port,
        }
    }

    /// One `CONNECT`: `deadline` ends the whole wait, `answer_wait` this try's.
    fn try_once(&self, deadline: Deadline, answer_wait: Duration) -> Result<Answer, ConnectError> {
        let try_deadline = deadline.min(Deadline::after(Some(answer_wait)));
        let Some(mut stream) = connect_unix_once(&self.uds_path)? else {
            return Ok(Answer::Again(None));
        };
        let port = self.port;
        let io = |e| ConnectError::io(format!("CONNECT {port} on {}", self.uds_path.display()), e);
        match stream.write_all(format!("CONNECT {port}\n").as_bytes()) {
            Ok(()) => {}
            Err(e) if is_dropped(&e) => return Ok(Answer::Again(None)),
            Err(e) => return Err(io(e)),
        }
        // Byte by byte: what follows the answer is the guest's, not ours to buffer.
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\n") && answer.len() <= MAX_ANSWER {
            if deadline.expired() {
                return Err(ConnectError::TimedOut);
            }
            if try_deadline.expired() {
                return Ok(Answer::Unanswered);
            }
            if interrupt::check().is_err() {
                return Err(ConnectError::Interrupted);
            }
            stream
                .set_read_timeout(Some(try_deadline.slice()))
                .map_err(io)?;
            match stream.read(&mut byte) {
                Ok(0) => return Ok(Answer::Again(None)),
                Ok(_) => answer.push(byte[0]),
                Err(e) if is_dropped(&e) => return Ok(Answer::Again(None)),
                Err(e) if is_slice_end(&e) => {}
                Err(e) => return Err(io(e)),
            }
        }
        let text = String::from_utf8_lossy(&answer).trim().to_string();
        if answer.ends_with(b"\n") && (text.starts_with("OK ") || text == "OK") {
            stream.set_read_timeout(None).map_err(io)?;
            Ok(Answer::Connected(stream))
        } else {
            Ok(Answer::Again(Some(text)))
        }
    }
}

impl Connector for HybridVsock {
    fn connect(&mut self, deadline: Deadline) -> Result<Stream, ConnectError> {
        let mut last = None;
        let mut answer_wait = ANSWER_WAIT_FIRST;
        let result = retry_until(deadline, || match self.try_once(deadline, answer_wait)? {
            Answer::Connected(stream) => Ok(Some(stream)),
            Answer::Again(answer) => {
                if answer.is_some() {
                    last = answer;
                }
                Ok(None)
            }
            Answer::Unanswered => {
                answer_wait = (answer_wait * 2).min(ANSWER_WAIT_MAX);
                Ok(None)
            }
        });
        match (result, last) {
            (Ok(stream), _) => Ok(stream.into()),
            (Err(ConnectError::TimedOut), Some(answer)) => Err(ConnectError::Refused(format!(
                "`CONNECT {}` on {} was answered {answer:?}",
                self.port,
                self.uds_path.display()
            ))),
            (Err(e), _) => Err(e),
        }
    }

    fn reconnects(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "hybrid vsock".to_string()
    }
}

fn is_dropped(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

fn is_slice_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// An `AF_VSOCK` connection to `<cid>:<port>` (a guest of a VMM with vhost-vsock). A refused
/// connection (nothing listens in the guest yet) is tried again until the deadline.
pub struct Vsock {
    cid: u32,
    port: u32,
}

impl Vsock {
    /// A connection to port `port` of the guest with context id `cid`.
    pub fn new(cid: u32, port: u32) -> Self {
        Vsock { cid, port }
    }

    /// A connection to the guest agent's port ([`agent_protocol::AGENT_PORT`]) of the guest
    /// with context id `cid`.
    pub fn agent(cid: u32) -> Self {
        Vsock::new(cid, agent_protocol::AGENT_PORT)
    }

    /// One try: `Ok(None)` when it should be tried again (refused: nothing listens yet).
    fn try_once(&self, deadline: Deadline) -> Result<Option<SocketStream>, ConnectError> {
        let fd = unsafe {
            // SAFETY: plain socket(2).
            libc::socket(
                libc::AF_VSOCK,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT) => ConnectError::Host(
                    "AF_VSOCK sockets are not available on this host (is the vsock module loaded?)"
                        .to_string(),
                ),
                _ => ConnectError::io("creating an AF_VSOCK socket", e),
            });
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = self.cid;
        addr.svm_port = self.port;
        let what = || format!("connecting to vsock {}:{}", self.cid, self.port);
        // SAFETY: a valid fd and an address of the size given.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        let mut error = if r == 0 {
            0
        } else {
            io::Error::last_os_error().raw_os_error().unwrap_or(0)
        };
        if error == libc::EINPROGRESS {
            error = wait_connected(&fd, deadline).map_err(|e| ConnectError::io(what(), e))?;
            if error == libc::EINPROGRESS {
                return Err(ConnectError::TimedOut);
            }
        }
        match error {
            0 => {
                set_blocking(&fd).map_err(|e| ConnectError::io(what(), e))?;
                Ok(Some(SocketStream::new(fd)))
            }
            libc::ECONNREFUSED | libc::ECONNRESET | libc::EINTR => Ok(None),
            e => Err(ConnectError::io(what(), io::Error::from_raw_os_error(e))),
        }
    }
}

/// Waits for a non-blocking connect to finish: its error (0: connected), or `EINPROGRESS`
/// when the deadline passed first.
fn wait_connected(fd: &OwnedFd, deadline: Deadline) -> io::Result<i32> {
    loop {
        let mut fds = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, deadline.slice().as_millis() as i32) };
        if n > 0 {
            let mut error: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid fd and an int of the size given.
            let r = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut error as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(error);
        }
        if interrupt::check().is_err() || deadline.expired() {
            return Ok(libc::EINPROGRESS);
        }
    }
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Connector for Vsock {
    fn connect(&mut self, deadline: Deadline) -> Result<Stream, ConnectError> {
        let stream = retry_until(deadline, || self.try_once(deadline))?;
        Ok(Box::new(stream))
    }

    fn reconnects(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "AF_VSOCK".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn deadline() -> Deadline {
        Deadline::after(Some(Duration::from_secs(10)))
    }

    /// A fake hybrid-vsock endpoint (a VMM's unix socket): each connection's `CONNECT` line
    /// is recorded and answered by `answer(i, line)` (`None`: dropped without an answer),
    /// until `stop` is set. Returns the lines it got.
    fn hybrid_server(
        path: &std::path::Path,
        stop: Arc<std::sync::atomic::AtomicBool>,
        answer: impl Fn(usize, &str) -> Option<&'static [u8]> + Send + 'static,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut asked = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                conn.set_nonblocking(false).unwrap();
                let mut line = String::new();
                std::io::BufReader::new(conn.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                if let Some(bytes) = answer(asked.len(), &line) {
                    conn.write_all(bytes).unwrap();
                    // keep it open until the client is done with it
                    let mut rest = Vec::new();
                    let _ = conn.read_to_end(&mut rest);
                }
                asked.push(line);
            }
            asked
        })
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ntng-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn hybrid_vsock_retries_until_the_guest_listens() {
        let dir = scratch_dir("hybrid-ok");
        let path = dir.join("vsock.sock");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // dropped, refused (nothing listens in the guest yet), then connected
        let server = hybrid_server(&path, stop.clone(), |i, _| match i {
            0 => None,
            1 => Some(b"NO\n"),
            _ => Some(b"OK 1073741824\nhello from the guest\n"),
        });
        let mut stream = HybridVsock::new(&path, 1234).connect(deadline()).unwrap();
        // the greeting after `OK` is left in the stream for the protocol
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") {
            stream.read_exact(&mut byte).unwrap();
            got.push(byte[0]);
        }
        assert_eq!(got, b"hello from the guest\n");
        drop(stream);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(server.join().unwrap(), ["CONNECT 1234\n"; 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hybrid_vsock_tries_again_when_a_connect_is_never_answered() {
        let dir = scratch_dir("hybrid-lost");
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // the first CONNECT is taken and held open without an answer (a lost request)
        let server = std::thread::spawn(move || {
            let (held, _) = listener.accept().unwrap();
            let (mut second, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(second.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            second.write_all(b"OK 1\n").unwrap();
            let mut rest = Vec::new();
            let _ = second.read_to_end(&mut rest);
            drop(held);
            line
        });
        let stream = HybridVsock::new(&path, 5).connect(deadline()).unwrap();
        drop(stream);
        assert_eq!(server.join().unwrap(), "CONNECT 5\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hybrid_vsock_that_never_listens_reports_the_last_answer() {
        let dir = scratch_dir("hybrid-no");
        let path = dir.join("vsock.sock");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = hybrid_server(&path, stop.clone(), |_, _| Some(b"NO\n"));
        let e = HybridVsock::new(&path, 99)
            .connect(Deadline::after(Some(Duration::from_millis(300))))
            .err()
            .unwrap();
        assert!(
            matches!(&e, ConnectError::Refused(text)
                if text.contains("`CONNECT 99`") && text.contains("answered \"NO\"")),
            "{e:?}"
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let asked = server.join().unwrap();
        assert!(asked.len() >= 2, "tried once only: {asked:?}");
        assert!(asked.iter().all(|l| l == "CONNECT 99\n"), "{asked:?}");
        // a socket that is not there: the deadline, nothing to report
        let missing = dir.join("nothing-here");
        let e = HybridVsock::new(&missing, 1)
            .connect(Deadline::after(Some(Duration::from_millis(100))))
            .err()
            .unwrap();
        assert!(matches!(e, ConnectError::TimedOut), "{e:?}");
        let e = ConnectUnix::new(&missing)
            .connect(Deadline::after(Some(Duration::from_millis(100))))
            .err()
            .unwrap();
        assert!(matches!(e, ConnectError::TimedOut), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_plain_unix_connection() {
        let dir = scratch_dir("unix-plain");
        let path = dir.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut stream = ConnectUnix::new(&path).connect(deadline()).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        stream.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn accept_unix_reports_an_exited_process() {
        let dir = std::env::temp_dir().join(format!("ntng-accept-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shell");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let process = Arc::new(crate::process::spawn(std::process::Command::new("true")).unwrap());
        let e = AcceptUnix::new(listener, process)
            .connect(Deadline::NEVER)
            .err()
            .unwrap();
        assert!(matches!(e, ConnectError::Exited(s) if s.success()), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ready_stream_is_handed_out_again() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut ready = Ready::new(ours);
        assert!(ready.is_ready() && !ready.reconnects());
        let mut a = ready.connect(deadline()).unwrap();
        let mut b = ready.connect(deadline()).unwrap();
        a.write_all(b"a").unwrap();
        b.write_all(b"b").unwrap();
        let mut buf = [0u8; 2];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ab");
    }

    /// AF_VSOCK is optional on a host: without it the error says so; with it, nothing
    /// listens on this port of the host itself (cid 1, local), so the wait runs out.
    #[test]
    fn vsock_without_a_listener() {
        // SAFETY: plain socket(2) and close(2), a probe.
        let available = unsafe {
            let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0);
            fd >= 0 && libc::close(fd) == 0
        };
        let r =
            Vsock::new(1, 0x7fff_fff0).connect(Deadline::after(Some(Duration::from_millis(200))));
        match r.err().unwrap() {
            ConnectError::Host(text) if !available => assert!(text.contains("AF_VSOCK"), "{text}"),
            ConnectError::TimedOut if available => {}
            e => panic!("unexpected {e:?} (AF_VSOCK available: {available})"),
        }
    }
}
