//! The agent as a local process on a unix socket (and a TCP one when asked), and a client
//! speaking the protocol to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use agent_protocol::{
    encode_frame, encode_json, read_frame, Entry, Exec, Exit, Failure, Frame, FrameError, Hello,
    Kind, AGENT_NAME, PROTOCOL_VERSION,
};

/// A guard against a hang, not a timing assertion: a test that waits this long has failed.
pub const HANG: Duration = Duration::from_secs(120);

/// A directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ntng-agent-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent binary listening on a unix socket; killed and reaped at drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    /// The TCP address it listens on too, when started with [`Agent::start_tcp`].
    pub tcp: Option<SocketAddr>,
    pub dir: TempDir,
    log: Arc<Mutex<String>>,
    drain: Option<JoinHandle<()>>,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::spawn(None, &[])
    }

    /// Every command runs its own `bash -c` (no warm shell).
    pub fn start_cold() -> Agent {
        Agent::spawn(None, &["--no-warm-shell"])
    }

    /// Listens on the unix socket and on `tcp:<addr>` (port 0: the agent picks one, its log
    /// line says which).
    pub fn start_tcp(addr: &str) -> Agent {
        Agent::spawn(Some(addr), &[])
    }

    fn spawn(tcp: Option<&str>, extra: &[&str]) -> Agent {
        let dir = TempDir::new("sock");
        let socket = dir.path().join("agent.sock");
        let mut command = Command::new(env!("CARGO_BIN_EXE_nixos-test-ng-agent"));
        command
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()));
        if let Some(addr) = tcp {
            command.arg(format!("--listen=tcp:{addr}"));
        }
        command.args(extra);
        // Started as a shell's background job would be (SIGINT and SIGQUIT ignored, which
        // bash cannot undo): the agent must give its commands the default actions back.
        // SAFETY: signal(2) is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the agent starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        assert!(first.contains("listening on unix:"), "agent said {first:?}");
        let mut bound = None;
        if tcp.is_some() {
            let mut line = String::new();
            stderr.read_line(&mut line).unwrap();
            let addr = line
                .trim_end()
                .split_once("listening on tcp:")
                .unwrap_or_else(|| panic!("agent said {line:?}"))
                .1;
            bound = Some(addr.parse().expect("a socket address"));
            first.push_str(&line);
        }
        let log = Arc::new(Mutex::new(first));
        let sink = log.clone();
        let drain = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Agent {
            child,
            socket,
            tcp: bound,
            dir,
            log,
            drain: Some(drain),
        }
    }

    /// A connection to the TCP listener, after its HELLO.
    pub fn connect_tcp(&self) -> Client<TcpStream> {
        let stream = TcpStream::connect(self.tcp.expect("started with start_tcp"))
            .expect("connect to the agent over TCP");
        stream.set_read_timeout(Some(HANG)).unwrap();
        let mut client = Client { stream };
        client.expect_hello(self.child.id());
        client
    }

    pub fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).expect("connect to the agent");
        stream.set_read_timeout(Some(HANG)).unwrap();
        let mut client = Client { stream };
        client.expect_hello(self.child.id());
        client
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the agent process is still running (not exited).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.drain.take() {
            let _ = t.join();
        }
    }
}

/// What a command did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<Exit>,
    /// How many STDOUT/STDERR frames carried the output.
    pub frames: usize,
}

impl Outcome {
    pub fn exit(&self) -> Exit {
        self.exit.expect("the command's EXIT")
    }
}

pub struct Client<S = UnixStream> {
    pub stream: S,
}

impl<S: Read + Write> Client<S> {
    fn expect_hello(&mut self, pid: u32) {
        let hello: Hello = self.expect(Kind::Hello).json().unwrap();
        assert_eq!(hello.agent, AGENT_NAME);
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(hello.pid, pid);
    }

    pub fn send(&mut self, kind: Kind, body: &[u8]) {
        self.stream.write_all(&encode_frame(kind, body)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_json<T: serde::Serialize>(&mut self, kind: Kind, message: &T) {
        self.stream
            .write_all(&encode_json(kind, message).unwrap())
            .unwrap();
    }

    pub fn recv(&mut self) -> Result<Frame, FrameError> {
        read_frame(&mut self.stream)
    }

    pub fn expect(&mut self, kind: Kind) -> Frame {
        let frame = self
            .recv()
            .unwrap_or_else(|e| panic!("expected {kind}, got {e}"));
        if frame.kind == Kind::Error {
            panic!(
                "expected {kind}, got ERROR {:?}",
                frame.json::<Failure>().unwrap().message
            );
        }
        assert_eq!(frame.kind, kind, "unexpected frame {frame:?}");
        frame
    }

    pub fn expect_error(&mut self) -> String {
        let frame = self.recv().unwrap();
        assert_eq!(frame.kind, Kind::Error, "expected ERROR, got {frame:?}");
        frame.json::<Failure>().unwrap().message
    }

    pub fn start(&mut self, command: &str, timeout_ms: Option<u64>, stdin: bool) {
        self.send_json(
            Kind::Exec,
            &Exec {
                command: command.to_owned(),
                timeout_ms,
                stdin,
            },
        );
    }

    /// Reads output frames into `out` until EXIT or until `until` says stop (returns true).
    pub fn pump(&mut self, out: &mut Outcome, mut until: impl FnMut(&Outcome) -> bool) {
        while out.exit.is_none() && !until(out) {
            let frame = self.recv().unwrap();
            match frame.kind {
                Kind::Stdout => out.stdout.extend_from_slice(&frame.body),
                Kind::Stderr => out.stderr.extend_from_slice(&frame.body),
                Kind::Exit => out.exit = Some(frame.json().unwrap()),
                other => panic!("unexpected {other} frame during EXEC: {frame:?}"),
            }
            if matches!(frame.kind, Kind::Stdout | Kind::Stderr) {
                out.frames += 1;
            }
        }
    }

    pub fn run(&mut self, command: &str) -> Outcome {
        self.start(command, None, false);
        let mut out = Outcome::default();
        self.pump(&mut out, |_| false);
        out
    }

    pub fn ping(&mut self) -> agent_protocol::Pong {
        self.send(Kind::Ping, b"");
        self.expect(Kind::Pong).json().unwrap()
    }

    /// Sends a tree: each entry, and for files its content as DATA frames.
    pub fn send_tree(&mut self, entries: &[(Entry, Vec<u8>)]) {
        for (entry, content) in entries {
            self.send_json(Kind::Entry, entry);
            for chunk in content.chunks(agent_protocol::DATA_CHUNK) {
                self.send(Kind::Data, chunk);
            }
        }
        self.send(Kind::End, b"");
    }

    /// Receives a tree up to END; `Err` with the message if an ERROR came instead.
    pub fn recv_tree(&mut self) -> Result<Vec<(Entry, Vec<u8>)>, String> {
        let mut entries: Vec<(Entry, Vec<u8>)> = Vec::new();
        loop {
            let frame = self.recv().unwrap();
            match frame.kind {
                Kind::Entry => entries.push((frame.json().unwrap(), Vec::new())),
                Kind::Data => entries
                    .last_mut()
                    .expect("DATA after an ENTRY")
                    .1
                    .extend(frame.body),
                Kind::End => return Ok(entries),
                Kind::Error => return Err(frame.json::<Failure>().unwrap().message),
                other => panic!("unexpected {other} frame in a tree"),
            }
        }
    }

    /// True once the agent closed the connection (EOF, or a reset).
    pub fn closed_by_agent(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(e) => panic!("waiting for the agent to close: {e}"),
            }
        }
    }
}

/// A process that is gone or a zombie waiting for its (new) parent to reap it.
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Waits until `pid` is gone or a zombie (the event, with the hang guard).
pub fn wait_gone(pid: i32) -> bool {
    let start = std::time::Instant::now();
    while !process_gone(pid) {
        if start.elapsed() > HANG {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Kills a process (by pid) at drop: a background child a test left running on purpose.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        wait_gone(self.0);
    }
}
