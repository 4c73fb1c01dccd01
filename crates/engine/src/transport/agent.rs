//! The client of the guest agent (`crates/agent`): the framed protocol of
//! `crates/agent-protocol` over any byte stream (hybrid vsock, `AF_VSOCK`, a unix socket).
//!
//! One request at a time per connection. Frames are read through an incremental decoder with
//! deadlines and interrupt checks, as the backdoor shell reads its lines: a header announcing
//! an unknown kind or more than `MAX_BODY` bytes, a frame cut off by the end of the stream,
//! or a frame that does not fit the request is a [`ShellError::Protocol`], and the connection
//! is dropped (it is out of step); nothing is allocated beyond one frame's body.
//!
//! Commands get the backdoor's preamble (`set -euo pipefail; `) and `TRACEPARENT`, so that
//! exit statuses, output and timeouts are the same on both transports; their stderr goes to a
//! callback (the machine logs it as console lines). A request abandoned halfway (a deadline,
//! an interrupt) leaves its answer owed: it is read and dropped before the next request.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use agent_protocol::{
    encode_frame, encode_json, Exec, Exit, Failure, Frame, FrameDecoder, Get, Hello, Kind, Pong,
    Put, Signal, AGENT_NAME, DATA_CHUNK, PROTOCOL_VERSION,
};

use super::shell::{shell_quote, Reply, ShellError, VM_PREAMBLE};
use super::stream::Stream;
use super::tree::{read_host_tree, TreeFault, TreeWriter};
use crate::interrupt::{self, Deadline, Reason};

/// How a tree transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The connection failed (see [`ShellError`]).
    #[error(transparent)]
    Transport(#[from] ShellError),
    /// The agent refused the request (its ERROR frame).
    #[error("the guest's agent refused: {0}")]
    Refused(String),
    /// Reading or writing the tree on the host failed.
    #[error(transparent)]
    Host(TreeFault),
}

/// What an abandoned request still owes before the connection is in step again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// Everything up to an EXIT (or an ERROR).
    Exit,
}

/// A connection to the guest's agent.
pub struct Agent {
    stream: Stream,
    decoder: FrameDecoder,
    scratch: Box<[u8]>,
    hello: Option<Hello>,
    preamble: &'static str,
    traceparent: Option<String>,
    owed: Option<Owed>,
    /// Why the connection is out of step, once it is.
    broken: Option<String>,
}

impl Agent {
    /// Wraps a connected stream (the agent sends HELLO first: see [`Agent::handshake`]).
    pub fn new(stream: impl Into<Stream>) -> Agent {
        Agent {
            stream: stream.into(),
            decoder: FrameDecoder::new(),
            scratch: vec![0u8; 256 * 1024].into_boxed_slice(),
            hello: None,
            preamble: VM_PREAMBLE,
            traceparent: None,
            owed: None,
            broken: None,
        }
    }

    /// Uses `preamble` before every command instead of the VM's.
    pub fn with_preamble(mut self, preamble: &'static str) -> Agent {
        self.preamble = preamble;
        self
    }

    /// The agent's HELLO, once the handshake passed.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// True once the connection is out of step or gone: a new one is needed.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// A second handle on the stream (to wake a blocked reader by shutting it down).
    pub fn clone_stream(&self) -> io::Result<Stream> {
        self.stream.try_clone_stream()
    }

    /// The `TRACEPARENT` the commands from now on run with (`None`: none).
    pub fn set_traceparent(&mut self, value: Option<String>) {
        self.traceparent = value;
    }

    /// Reads the agent's HELLO and checks its protocol version. `on_idle` is called when a
    /// slice passes without data and says whether to keep waiting.
    pub fn handshake(
        &mut self,
        deadline: Deadline,
        on_idle: &mut dyn FnMut() -> bool,
    ) -> Result<Hello, ShellError> {
        let frame = loop {
            if let Some(frame) = self.take_frame()? {
                break frame;
            }
            if !self.fill(deadline, true)? && !on_idle() {
                return Err(ShellError::TimedOut);
            }
        };
        if frame.kind != Kind::Hello {
            return Err(self.out_of_step(format!(
                "expected HELLO from the guest's agent, got a {} frame",
                frame.kind
            )));
        }
        let hello: Hello = self.parse(&frame)?;
        if hello.agent != AGENT_NAME {
            return Err(self.out_of_step(format!(
                "the program on the agent's port is {:?}, not {AGENT_NAME}",
                hello.agent
            )));
        }
        if hello.protocol != PROTOCOL_VERSION {
            return Err(self.out_of_step(format!(
                "the guest's agent ({} {}) speaks protocol {}, this driver speaks {PROTOCOL_VERSION}: rebuild the guest with this driver's agent (or set NIXOS_TEST_NG_TRANSPORT=backdoor)",
                hello.agent, hello.version, hello.protocol
            )));
        }
        self.hello = Some(hello.clone());
        Ok(hello)
    }

    /// Runs `command` as the backdoor would (its preamble, `TRACEPARENT`, a guest-side
    /// timeout): its exit status (-1 for [`Reply::OutputOnly`], -2 and no output for
    /// [`Reply::Nothing`], as upstream) and its stdout. Its stderr goes to `stderr` as it
    /// arrives.
    pub fn execute(
        &mut self,
        command: &str,
        timeout: Option<Duration>,
        reply: Reply,
        deadline: Deadline,
        stderr: &mut dyn FnMut(&[u8]),
    ) -> Result<(i32, Vec<u8>), ShellError> {
        self.settle(deadline, stderr)?;
        let mut script = String::new();
        if let Some(tp) = &self.traceparent {
            script.push_str(&format!("export TRACEPARENT={}; ", shell_quote(tp)));
        }
        script.push_str(self.preamble);
        script.push_str(command);
        let exec = Exec {
            command: script,
            timeout_ms: timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
            stdin: false,
        };
        self.send_json(Kind::Exec, &exec)?;
        self.owed = Some(Owed::Exit);
        if reply == Reply::Nothing {
            return Ok((-2, Vec::new()));
        }
        let mut out = Vec::new();
        let exit = self.read_exit(deadline, &mut |kind, bytes| match kind {
            Kind::Stdout => out.extend_from_slice(bytes),
            _ => stderr(bytes),
        })?;
        let status = match reply {
            Reply::Full => exit.status,
            _ => -1,
        };
        Ok((status, out))
    }

    /// Runs `command` for `shell_interact`: stdout and stderr go to `out` as they arrive;
    /// SIGINT on the host (the interrupt flag) is cleared and sent to the command's process
    /// group. Returns its exit status. SIGTERM and the global timeout still end the wait.
    pub fn interact(
        &mut self,
        command: &str,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<i32, ShellError> {
        self.settle(Deadline::NEVER, &mut |_| {})?;
        let exec = Exec {
            command: command.to_string(),
            timeout_ms: None,
            stdin: false,
        };
        self.send_json(Kind::Exec, &exec)?;
        self.owed = Some(Owed::Exit);
        loop {
            while let Some(frame) = self.take_frame()? {
                match frame.kind {
                    Kind::Stdout | Kind::Stderr => out(&frame.body),
                    _ => return self.end_of_exec(frame).map(|exit| exit.status),
                }
            }
            match interrupt::pending() {
                Some(Reason::Interrupt) => {
                    interrupt::clear();
                    self.send_json(
                        Kind::Signal,
                        &Signal {
                            signal: libc::SIGINT,
                        },
                    )?;
                }
                Some(_) => return Err(ShellError::Interrupted),
                None => {}
            }
            self.fill(Deadline::NEVER, false)?;
        }
    }

    /// Asks for the guest's clocks.
    pub fn ping(&mut self, deadline: Deadline) -> Result<Pong, ShellError> {
        self.settle(deadline, &mut |_| {})?;
        self.send_frame(Kind::Ping, &[])?;
        let frame = self.wait_frame(deadline)?;
        match frame.kind {
            Kind::Pong => self.parse(&frame),
            kind => Err(self.out_of_step(format!("expected PONG, got a {kind} frame"))),
        }
    }

    /// Copies the host file or tree at `host` to `guest` (an absolute path; its parents are
    /// made), every entry owned by `uid`:`gid`, modes kept, symlinks as links.
    pub fn put_tree(
        &mut self,
        host: &Path,
        guest: &str,
        uid: u32,
        gid: u32,
        deadline: Deadline,
    ) -> Result<(), TreeError> {
        let result = self.put_tree_once(host, guest, uid, gid, deadline);
        self.abandon_tree_on(result)
    }

    /// A tree transfer given up halfway (a deadline, an interrupt) leaves the connection
    /// out of step: it is dropped, so the next request gets a new one.
    fn abandon_tree_on(&mut self, result: Result<(), TreeError>) -> Result<(), TreeError> {
        if let Err(TreeError::Transport(ShellError::TimedOut | ShellError::Interrupted)) = &result {
            let _ = self.out_of_step("a file copy was given up halfway".to_string());
        }
        result
    }

    fn put_tree_once(
        &mut self,
        host: &Path,
        guest: &str,
        uid: u32,
        gid: u32,
        deadline: Deadline,
    ) -> Result<(), TreeError> {
        let entries = read_host_tree(host, uid, gid).map_err(TreeError::Host)?;
        self.settle(deadline, &mut |_| {})?;
        self.send_json(
            Kind::Put,
            &Put {
                path: guest.to_string(),
            },
        )?;
        for item in &entries {
            self.send_json(Kind::Entry, &item.entry)?;
            if let Some(path) = &item.file {
                self.send_file(path, item.entry.size)?;
            }
        }
        self.send_frame(Kind::End, &[])?;
        let frame = self.wait_frame(deadline)?;
        match frame.kind {
            Kind::Done => Ok(()),
            Kind::Error => Err(TreeError::Refused(self.parse::<Failure>(&frame)?.message)),
            kind => Err(self
                .out_of_step(format!("expected DONE after a PUT, got a {kind} frame"))
                .into()),
        }
    }

    /// Sends exactly `size` bytes of the host file at `path` as DATA frames. A file that
    /// changed size meanwhile leaves the connection out of step: it is dropped.
    fn send_file(&mut self, path: &Path, size: u64) -> Result<(), TreeError> {
        let fault = |e| {
            TreeError::Host(TreeFault::Io {
                context: format!("reading {}", path.display()),
                source: e,
            })
        };
        let mut file = std::fs::File::open(path).map_err(fault)?;
        let mut left = size;
        let mut chunk = vec![0u8; DATA_CHUNK];
        while left > 0 {
            let want = (left.min(DATA_CHUNK as u64)) as usize;
            let n = match file.read(&mut chunk[..want]) {
                Ok(0) => {
                    let _ = self.out_of_step(format!("{} shrank while copied", path.display()));
                    return Err(fault(io::Error::from(io::ErrorKind::UnexpectedEof)));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = self.out_of_step(format!("reading {} failed", path.display()));
                    return Err(fault(e));
                }
            };
            self.send_frame(Kind::Data, &chunk[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Copies the guest's file or tree at `guest` (an absolute path) to `<parent>/<name>` on
    /// the host, symlinks as links; nothing outside that path is read or written.
    pub fn get_tree(
        &mut self,
        guest: &str,
        parent: &Path,
        name: &str,
        deadline: Deadline,
    ) -> Result<(), TreeError> {
        let result = self.get_tree_once(guest, parent, name, deadline);
        self.abandon_tree_on(result)
    }

    fn get_tree_once(
        &mut self,
        guest: &str,
        parent: &Path,
        name: &str,
        deadline: Deadline,
    ) -> Result<(), TreeError> {
        let mut writer = TreeWriter::new(parent, name).map_err(TreeError::Host)?;
        self.settle(deadline, &mut |_| {})?;
        self.send_json(
            Kind::Get,
            &Get {
                path: guest.to_string(),
            },
        )?;
        // A host fault is remembered and the rest of the tree read, to stay in step.
        let mut fault: Option<TreeFault> = None;
        loop {
            let frame = self.wait_frame(deadline)?;
            let step = match frame.kind {
                Kind::Error => {
                    return Err(TreeError::Refused(self.parse::<Failure>(&frame)?.message));
                }
                Kind::End => break,
                Kind::Entry => {
                    let entry = self.parse(&frame)?;
                    if fault.is_some() {
                        continue;
                    }
                    writer.entry(&entry)
                }
                Kind::Data if fault.is_some() => continue,
                Kind::Data => writer.data(&frame.body),
                kind => {
                    return Err(self
                        .out_of_step(format!("a {kind} frame in the tree of a GET"))
                        .into())
                }
            };
            match step {
                Ok(()) => {}
                Err(TreeFault::Protocol(what)) => {
                    return Err(self
                        .out_of_step(format!("the tree of a GET: {what}"))
                        .into())
                }
                Err(e) => fault = Some(e),
            }
        }
        match fault {
            Some(e) => Err(TreeError::Host(e)),
            None => writer.finish().map_err(|e| match e {
                TreeFault::Protocol(what) => self
                    .out_of_step(format!("the tree of a GET: {what}"))
                    .into(),
                e => TreeError::Host(e),
            }),
        }
    }

    /// Reads and drops what an abandoned request still owes (its stderr still goes to
    /// `stderr`).
    fn settle(
        &mut self,
        deadline: Deadline,
        stderr: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ShellError> {
        if let Some(why) = &self.broken {
            return Err(ShellError::Protocol(why.clone()));
        }
        if self.owed == Some(Owed::Exit) {
            self.read_exit(deadline, &mut |kind, bytes| {
                if kind == Kind::Stderr {
                    stderr(bytes)
                }
            })?;
        }
        Ok(())
    }

    /// Reads a command's frames up to its EXIT, handing STDOUT and STDERR to `data`.
    fn read_exit(
        &mut self,
        deadline: Deadline,
        data: &mut dyn FnMut(Kind, &[u8]),
    ) -> Result<Exit, ShellError> {
        loop {
            let frame = self.wait_frame(deadline)?;
            match frame.kind {
                Kind::Stdout | Kind::Stderr => data(frame.kind, &frame.body),
                _ => return self.end_of_exec(frame),
            }
        }
    }

    /// The frame that ends a command: EXIT, or ERROR (the agent could not run it).
    fn end_of_exec(&mut self, frame: Frame) -> Result<Exit, ShellError> {
        match frame.kind {
            Kind::Exit => {
                let exit = self.parse(&frame)?;
                self.owed = None;
                Ok(exit)
            }
            Kind::Error => {
                self.owed = None;
                let failure: Failure = self.parse(&frame)?;
                Err(ShellError::Protocol(format!(
                    "the guest's agent could not run the command: {}",
                    failure.message
                )))
            }
            kind => Err(self.out_of_step(format!("a {kind} frame while a command runs"))),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self, frame: &Frame) -> Result<T, ShellError> {
        frame.json().map_err(|e| self.out_of_step(e.to_string()))
    }

    /// The connection is out of step: it is shut down, and every later call fails so.
    fn out_of_step(&mut self, why: String) -> ShellError {
        let why = format!("{why} (the connection to the guest's agent was dropped)");
        let _ = self.stream.shutdown();
        self.broken = Some(why.clone());
        ShellError::Protocol(why)
    }

    fn take_frame(&mut self) -> Result<Option<Frame>, ShellError> {
        if let Some(why) = &self.broken {
            return Err(ShellError::Protocol(why.clone()));
        }
        match self.decoder.next_frame() {
            Ok(frame) => Ok(frame),
            Err(e) => Err(self.out_of_step(format!("a bad frame from the guest's agent: {e}"))),
        }
    }

    /// The next frame, waiting until `deadline`.
    fn wait_frame(&mut self, deadline: Deadline) -> Result<Frame, ShellError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            if !self.fill(deadline, true)? && deadline.expired() {
                return Err(ShellError::TimedOut);
            }
        }
    }

    /// One read into the decoder. `Ok(false)` when the slice passed without data. With
    /// `interruptible`, a pending interrupt ends the wait first.
    fn fill(&mut self, deadline: Deadline, interruptible: bool) -> Result<bool, ShellError> {
        if interruptible && interrupt::pending().is_some() {
            return Err(ShellError::Interrupted);
        }
        if deadline.expired() {
            return Ok(false);
        }
        self.stream.set_read_timeout(Some(deadline.slice()))?;
        match self.stream.read(&mut self.scratch) {
            Ok(0) => match self.decoder.finish() {
                Ok(()) => {
                    self.broken = Some("the guest's agent disconnected".to_string());
                    Err(ShellError::Disconnected)
                }
                Err(e) => Err(self.out_of_step(format!(
                    "the guest's agent's connection ended inside a frame: {e}"
                ))),
            },
            Ok(n) => {
                self.decoder.push(&self.scratch[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.broken = Some("the guest's agent disconnected".to_string());
                Err(ShellError::Disconnected)
            }
            Err(e) => Err(ShellError::Io(e)),
        }
    }

    fn send_frame(&mut self, kind: Kind, body: &[u8]) -> Result<(), ShellError> {
        if let Some(why) = &self.broken {
            return Err(ShellError::Protocol(why.clone()));
        }
        self.stream
            .write_all(&encode_frame(kind, body))
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    ShellError::Disconnected
                }
                _ => ShellError::Io(e),
            })
    }

    fn send_json<T: serde::Serialize>(
        &mut self,
        kind: Kind,
        message: &T,
    ) -> Result<(), ShellError> {
        let bytes = encode_json(kind, message)
            .map_err(|e| ShellError::Protocol(format!("encoding a {kind} frame: {e}")))?;
        if let Some(why) = &self.broken {
            return Err(ShellError::Protocol(why.clone()));
        }
        self.stream.write_all(&bytes).map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ShellError::Disconnected,
            _ => ShellError::Io(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::connector::{ConnectUnix, Connector};
    use agent_protocol::{encode_frame, Kind};
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    fn deadline() -> Deadline {
        Deadline::after(Some(Duration::from_secs(30)))
    }

    fn hello_frame(agent: &str, protocol: u32) -> Vec<u8> {
        encode_json(
            Kind::Hello,
            &Hello {
                agent: agent.into(),
                version: "9.9.9".into(),
                protocol,
                pid: 42,
                boot_id: None,
            },
        )
        .unwrap()
    }

    /// A client whose agent is played by `wire`: written at once, then the stream closes.
    fn scripted(wire: Vec<u8>) -> (Agent, std::thread::JoinHandle<()>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let _ = theirs.write_all(&wire);
            // read what the client sends until it hangs up, so closing is a clean end
            let _ = theirs.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink);
        });
        (Agent::new(ours), peer)
    }

    #[test]
    fn the_handshake_checks_name_and_protocol_version() {
        let (mut a, peer) = scripted(hello_frame(AGENT_NAME, PROTOCOL_VERSION));
        let hello = a.handshake(deadline(), &mut || true).unwrap();
        assert_eq!((hello.version.as_str(), hello.pid), ("9.9.9", 42));
        drop(a);
        peer.join().unwrap();

        let (mut a, peer) = scripted(hello_frame(AGENT_NAME, PROTOCOL_VERSION + 1));
        let e = a
            .handshake(deadline(), &mut || true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("speaks protocol 2, this driver speaks 1")
                && e.contains("NIXOS_TEST_NG_TRANSPORT=backdoor"),
            "{e}"
        );
        drop(a);
        peer.join().unwrap();

        let (mut a, peer) = scripted(hello_frame("something-else", PROTOCOL_VERSION));
        let e = a
            .handshake(deadline(), &mut || true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"something-else\", not nixos-test-ng-agent"),
            "{e}"
        );
        drop(a);
        peer.join().unwrap();

        let (mut a, peer) = scripted(encode_frame(Kind::Stdout, b"hi"));
        let e = a
            .handshake(deadline(), &mut || true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected HELLO"), "{e}");
        // out of step: every later request fails at once, naming why
        let e = a
            .execute("true", None, Reply::Full, deadline(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected HELLO"), "{e}");
        drop(a);
        peer.join().unwrap();
    }

    #[test]
    fn no_hello_in_time_is_a_timeout() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut a = Agent::new(ours);
        let d = Deadline::after(Some(Duration::from_millis(100)));
        let r = a.handshake(d, &mut || !d.expired());
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
    }

    /// The real agent on a unix socket, and a client that passed its handshake.
    fn real_agent() -> (Agent, crate::process::ChildProcess, std::path::PathBuf) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ntng-agent-client-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let mut cmd = Command::new(crate::fake::agent_bin());
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = crate::process::spawn(cmd).unwrap();
        let stream = ConnectUnix::new(&socket).connect(deadline()).unwrap();
        let mut a = Agent::new(stream);
        a.handshake(deadline(), &mut || true).unwrap();
        (a, child, dir)
    }

    fn run(a: &mut Agent, command: &str) -> (i32, Vec<u8>) {
        a.execute(command, None, Reply::Full, deadline(), &mut |_| {})
            .unwrap()
    }

    #[test]
    fn traceparent_stderr_ping_and_an_abandoned_command() {
        let (mut a, child, dir) = real_agent();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        a.set_traceparent(Some(tp.into()));
        assert_eq!(
            run(&mut a, "sh -c 'echo $TRACEPARENT'").1,
            format!("{tp}\n").as_bytes()
        );
        a.set_traceparent(None);
        assert_eq!(run(&mut a, "echo ${TRACEPARENT:-none}").1, b"none\n");
        let mut err = Vec::new();
        let r = a.execute(
            "echo out; echo err >&2; exit 7",
            None,
            Reply::Full,
            deadline(),
            &mut |b| err.extend_from_slice(b),
        );
        assert_eq!(r.unwrap(), (7, b"out\n".to_vec()));
        assert_eq!(err, b"err\n");
        let pong = a.ping(deadline()).unwrap();
        assert!(pong.realtime_ns > 0 && pong.monotonic_ns > 0);
        // abandoned: its answer is read and dropped before the next command's
        let r = a.execute(
            "sleep 0.5; echo late",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_millis(100))),
            &mut |_| {},
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
        assert_eq!(run(&mut a, "echo mine"), (0, b"mine\n".to_vec()));
        // a missing file is the agent's refusal; the connection stays usable
        let r = a.get_tree("/nonexistent/ntng", &dir, "x", deadline());
        assert!(matches!(r, Err(TreeError::Refused(_))), "{r:?}");
        assert_eq!(run(&mut a, "echo still"), (0, b"still\n".to_vec()));
        child.kill();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Ctrl-C during `shell_interact` reaches the command as SIGINT (a SIGNAL frame), and the
    /// connection stays usable. The interrupt flag is the process's, so the scenario runs in
    /// a child process of this test binary, where nothing else runs.
    #[test]
    fn ctrl_c_interrupts_the_interactive_command_in_the_guest() {
        const CHILD: &str = "NTNG_TEST_CTRL_C_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let (mut a, child, dir) = real_agent();
            let mut seen = Vec::new();
            let status = a
                .interact(
                    "trap 'echo got-int; exit 5' INT; echo ready; sleep 30 & wait",
                    &mut |b| {
                        seen.extend_from_slice(b);
                        if seen.ends_with(b"ready\n") {
                            interrupt::raise(Reason::Interrupt);
                        }
                    },
                )
                .unwrap();
            assert_eq!((status, seen.as_slice()), (5, &b"ready\ngot-int\n"[..]));
            assert!(interrupt::pending().is_none(), "the Ctrl-C was not cleared");
            assert_eq!(run(&mut a, "echo after"), (0, b"after\n".to_vec()));
            child.kill();
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "transport::agent::tests::ctrl_c_interrupts_the_interactive_command_in_the_guest",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    /// Frames (some well-formed, some not) and raw garbage, as a misbehaving agent might
    /// send after its HELLO.
    fn wire() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let kinds: Vec<u8> = Kind::ALL.iter().map(|k| *k as u8).collect();
        let frame = (
            proptest::sample::select(kinds),
            proptest::collection::vec(any::<u8>(), 0..64),
            prop_oneof![Just(0i64), -3i64..3, Just(1 << 21)],
        )
            .prop_map(|(kind, body, skew)| {
                let len = (body.len() as i64 + skew).max(0) as u32;
                let mut out = vec![kind];
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&body);
                out
            });
        let json = prop_oneof![
            Just(encode_frame(Kind::Exit, br#"{"status":3}"#)),
            Just(encode_frame(
                Kind::Entry,
                br#"{"path":"","kind":"dir","mode":493,"uid":0,"gid":0}"#
            )),
            Just(encode_frame(
                Kind::Entry,
                br#"{"path":"../up","kind":"file","mode":420,"uid":0,"gid":0,"size":2}"#
            )),
            Just(encode_frame(
                Kind::Entry,
                br#"{"path":"l","kind":"symlink","mode":511,"uid":0,"gid":0,"target":"/"}"#
            )),
            Just(encode_frame(
                Kind::Entry,
                br#"{"path":"l/x","kind":"file","mode":420,"uid":0,"gid":0,"size":1}"#
            )),
            Just(encode_frame(Kind::Data, b"xy")),
            Just(encode_frame(Kind::End, b"")),
        ];
        let piece = prop_oneof![frame, json, proptest::collection::vec(any::<u8>(), 0..16),];
        proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config(64))]

        /// Whatever follows the HELLO, the client answers or fails cleanly: no panic, no
        /// hang, and a GET's tree is written only inside its target.
        #[test]
        fn arbitrary_bytes_never_panic_or_escape(wire in wire()) {
            let mut all = hello_frame(AGENT_NAME, PROTOCOL_VERSION);
            all.extend_from_slice(&wire);
            let (mut a, peer) = scripted(all.clone());
            a.handshake(deadline(), &mut || true).unwrap();
            let _ = a.execute("true", None, Reply::Full, deadline(), &mut |_| {});
            drop(a);
            peer.join().unwrap();

            let dir = std::env::temp_dir().join(format!(
                "ntng-agent-prop-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("target")).unwrap();
            let (mut a, peer) = scripted(all);
            a.handshake(deadline(), &mut || true).unwrap();
            let _ = a.get_tree("/x", &dir.join("target"), "t", deadline());
            drop(a);
            peer.join().unwrap();
            let top: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            proptest::prop_assert_eq!(top, vec![std::ffi::OsString::from("target")]);
            let inside: Vec<_> = std::fs::read_dir(dir.join("target")).unwrap().map(|e| e.unwrap().file_name()).collect();
            proptest::prop_assert!(inside.iter().all(|n| n == "t"), "{:?}", inside);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
