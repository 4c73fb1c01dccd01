//! The NixOS shell backdoor: a bash reading commands from a virtio console.
//!
//! Framing: by default ([`Framing::Fast`]) a command runs in a subshell of the backdoor bash
//! and its output comes back base64-encoded with the exit status on the same line, so each
//! command costs one round trip. [`Framing::Upstream`] sends upstream's bytes exactly:
//! `bash -c '<cmd>' | (base64 -w 0; echo)`, and once the output line is read, a second line
//! `echo ${PIPESTATUS[0]}` (two round trips). The output is base64 in both, so anything the
//! command prints (binary, framing look-alikes) is safe.
//!
//! Containers talk over a socket pair, which is 8-bit clean, so their shells use
//! [`Framing::Segments`]: the output comes back raw in length-prefixed segments, encoded by a
//! bash function of the shell itself, which saves the `base64` process per command.

use std::io::{self, Read, Write};
use std::time::Duration;

use base64::Engine as _;

use super::stream::Stream;
use crate::interrupt::{self, Deadline};

/// The line the guest prints when its root shell is ready.
pub const HANDSHAKE: &[u8] = b"Spawning backdoor root shell...";

/// How a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The guest closed the connection (it died, or QEMU exited).
    #[error("the guest's shell disconnected")]
    Disconnected,
    /// No answer before the deadline.
    #[error("no answer from the guest's shell in time")]
    TimedOut,
    /// SIGINT/SIGTERM/global timeout while waiting.
    #[error("interrupted")]
    Interrupted,
    /// The guest answered something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A socket error.
    #[error("shell socket: {0}")]
    Io(#[from] io::Error),
}

/// What `execute` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Output and exit status.
    Full,
    /// Output only (for commands that take the guest down).
    OutputOnly,
    /// Nothing: send and return.
    Nothing,
}

/// Quotes `s` for a POSIX shell exactly as Python's `shlex.quote` does.
pub fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_string();
    }
    let safe = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if safe {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// Formats a timeout for coreutils/busybox `timeout`.
fn timeout_arg(t: Duration) -> String {
    let s = t.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.3}")
    }
}

/// How a command is wrapped for the guest's bash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A subshell of the backdoor bash (`( eval '…' )`) when no timeout is asked for, and
    /// the exit status on the output's line: half the guest work of upstream's line.
    Fast,
    /// Upstream's exact bytes: `bash -c '…' | (base64 -w 0; echo)`, then, after the output
    /// line came back, [`UPSTREAM_STATUS_QUERY`]. Nothing else is sent (no `TRACEPARENT`).
    Upstream,
    /// As [`Framing::Fast`], but the output is piped into [`SEGMENTS_ENCODER`]'s function
    /// instead of `base64`: for 8-bit clean channels only (a container's socket pair). The
    /// reply is `D<n>:<n raw bytes>` segments, `Z` for a NUL byte, and after 4 KiB
    /// `B<base64 of the rest>`, then ` <status>\n` (or `\n` when no status is asked for).
    Segments,
}

impl Framing {
    /// `NIXOS_TEST_NG_SHELL_FRAMING=upstream` selects upstream's exact framing.
    pub fn from_env() -> Framing {
        match std::env::var("NIXOS_TEST_NG_SHELL_FRAMING").as_deref() {
            Ok("upstream") => Framing::Upstream,
            _ => Framing::Fast,
        }
    }
}

/// Upstream's second line of `execute`, sent once the command's output line is read.
pub const UPSTREAM_STATUS_QUERY: &str = "echo ${PIPESTATUS[0]}\n";

/// What runs before every command on a NixOS backdoor (upstream's `execute`).
pub const VM_PREAMBLE: &str = "set -euo pipefail; ";
/// What runs before every command in a container. Upstream runs
/// `set -eo pipefail; source /etc/profile; set -u;` in a fresh shell with an empty
/// environment; the container's persistent shell sources the profile once when it starts
/// ([`CONTAINER_SETUP`]), and every command's subshell inherits exactly that environment.
pub const CONTAINER_PREAMBLE: &str = "set -eo pipefail; set -u; ";
/// Run once in a container's shell before its handshake: the profile, the output encoder of
/// [`Framing::Segments`], and, when PID 1 is systemd, a wait for its private bus socket, so
/// that the first command may be a `systemctl` (upstream's first command races systemd's
/// start-up and can fail with "Host is down").
pub const CONTAINER_SETUP: &str = concat!(
    "source /etc/profile >/dev/null 2>&1 </dev/null; set +eu\n",
    segments_encoder!(),
    "read -r _init </proc/1/comm; if [ \"$_init\" = systemd ]; then ",
    "until [ -S /run/systemd/private ]; do sleep 0.01; done; fi; unset _init\n"
);

/// The bash function of [`Framing::Segments`] (one line), reading a command's output from its
/// stdin: builtins only (a subshell, no exec) up to 4 KiB, which is every short answer, then
/// `base64` for the rest, since bash reads a pipe one byte per system call. Bytes are counted
/// in the C locale; `read -d ''` stops at a NUL, which bash strings cannot hold: sent as `Z`.
macro_rules! segments_encoder {
    () => {
        "__ntng_out() { local LC_ALL=C c n=0; \
         while IFS= read -r -d '' -n 4096 c; do \
         if [ ${#c} -lt 4096 ]; then printf 'D%d:%sZ' ${#c} \"$c\"; n=$((n + ${#c} + 1)); \
         [ $n -lt 4096 ] && continue; else printf 'D%d:%s' ${#c} \"$c\"; fi; \
         printf B; exec base64 -w 0; done; \
         [ -z \"$c\" ] || printf 'D%d:%s' ${#c} \"$c\"; }\n"
    };
}
use segments_encoder;
/// The definition of the [`Framing::Segments`] encoder, to send to a shell once.
pub const SEGMENTS_ENCODER: &str = segments_encoder!();

/// Builds the line sent for one command, and how many reply lines it produces. With
/// [`Framing::Upstream`] that is the first of upstream's two lines; [`Shell::execute`] sends
/// [`UPSTREAM_STATUS_QUERY`] after reading its reply when the status is wanted.
pub fn command_line(
    command: &str,
    timeout: Option<Duration>,
    reply: Reply,
    framing: Framing,
) -> (String, usize) {
    command_line_with(VM_PREAMBLE, command, timeout, reply, framing)
}

/// [`command_line`] with another preamble.
pub fn command_line_with(
    preamble: &str,
    command: &str,
    timeout: Option<Duration>,
    reply: Reply,
    framing: Framing,
) -> (String, usize) {
    let script = shell_quote(&format!("{preamble}{command}"));
    let run = match (timeout, framing) {
        (Some(t), _) => format!("timeout {} bash -c {script}", timeout_arg(t)),
        (None, Framing::Upstream) => format!(" bash -c {script}"),
        (None, Framing::Fast | Framing::Segments) => format!("( eval {script} )"),
    };
    match (framing, reply) {
        (Framing::Upstream, _) => (format!("{run} | (base64 -w 0; echo)\n"), 1),
        (Framing::Fast, Reply::Full) => (
            format!("{run} | base64 -w 0; echo \" ${{PIPESTATUS[0]}}\"\n"),
            1,
        ),
        (Framing::Fast, _) => (format!("{run} | base64 -w 0; echo\n"), 1),
        (Framing::Segments, Reply::Full) => (
            format!("{run} | __ntng_out; echo \" ${{PIPESTATUS[0]}}\"\n"),
            1,
        ),
        (Framing::Segments, _) => (format!("{run} | __ntng_out; echo\n"), 1),
    }
}

/// A connected backdoor shell, over any byte stream (see [`super::connector`]).
pub struct Shell {
    stream: Stream,
    buf: Vec<u8>,
    scratch: Box<[u8]>,
    framing: Framing,
    preamble: &'static str,
    /// Reply lines of an abandoned command (interrupted or timed out) still to be skipped,
    /// so the next command reads its own answer.
    owed_lines: usize,
    /// `TRACEPARENT` as the next commands should see it, and as the guest's persistent shell
    /// has it exported: sent again only when it changes, since every byte of a command line
    /// costs time in a guest under TCG.
    traceparent_wanted: Option<String>,
    traceparent_sent: Option<String>,
}

impl Shell {
    /// Wraps a connected stream.
    pub fn new(stream: impl Into<Stream>) -> Self {
        Shell::with_framing(stream, Framing::from_env())
    }

    /// Wraps a connected stream, with the given framing.
    pub fn with_framing(stream: impl Into<Stream>, framing: Framing) -> Self {
        let stream = stream.into();
        Shell {
            framing,
            preamble: VM_PREAMBLE,
            traceparent_wanted: None,
            traceparent_sent: None,
            stream,
            buf: Vec::new(),
            scratch: vec![0u8; 256 * 1024].into_boxed_slice(),
            owed_lines: 0,
        }
    }

    /// Uses `preamble` before every command instead of the VM's.
    pub fn with_preamble(mut self, preamble: &'static str) -> Self {
        self.preamble = preamble;
        self
    }

    /// Uses [`Framing::Segments`] instead of [`Framing::Fast`] (upstream's framing stays): for
    /// an 8-bit clean channel whose shell has [`SEGMENTS_ENCODER`] defined.
    pub fn with_raw_output(mut self) -> Self {
        if self.framing == Framing::Fast {
            self.framing = Framing::Segments;
        }
        self
    }

    /// Reads until the handshake line; `on_idle` is called when a slice passes without data
    /// and says whether to keep waiting.
    pub fn wait_for_handshake(
        &mut self,
        deadline: Deadline,
        on_idle: &mut dyn FnMut() -> bool,
    ) -> Result<(), ShellError> {
        loop {
            if find(&self.buf, HANDSHAKE).is_some() {
                // Nothing is printed after the handshake but its newline; drop whatever is.
                self.buf.clear();
                self.owed_lines = 0;
                return Ok(());
            }
            if !self.fill(deadline)? && !on_idle() {
                return Err(ShellError::TimedOut);
            }
        }
    }

    /// Sends raw bytes (e.g. `poweroff\n`).
    pub fn send_raw(&mut self, data: &[u8]) -> Result<(), ShellError> {
        self.stream.write_all(data).map_err(map_write_err)
    }

    /// Reads up to `max` raw bytes (what is buffered, else what arrives first), waiting
    /// until `deadline`; empty when the guest closed the connection or nothing came.
    pub fn recv_raw(&mut self, max: usize, deadline: Deadline) -> Result<Vec<u8>, ShellError> {
        while self.buf.is_empty() {
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) if deadline.expired() => return Ok(Vec::new()),
                Ok(false) => {}
                Err(ShellError::Disconnected) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let n = max.min(self.buf.len());
        Ok(self.buf.drain(..n).collect())
    }

    /// The `TRACEPARENT` the commands from now on run with (`None`: none).
    pub fn set_traceparent(&mut self, value: Option<String>) {
        self.traceparent_wanted = value;
    }

    /// Runs `command`, returning its exit status (or -1/-2 as upstream when not waited for)
    /// and its stdout.
    pub fn execute(
        &mut self,
        command: &str,
        timeout: Option<Duration>,
        reply: Reply,
        deadline: Deadline,
    ) -> Result<(i32, Vec<u8>), ShellError> {
        while self.owed_lines > 0 {
            if self.framing == Framing::Segments {
                self.read_segments(deadline)?;
            } else {
                self.read_line(deadline)?;
            }
            self.owed_lines -= 1;
        }
        let (mut line, lines) =
            command_line_with(self.preamble, command, timeout, reply, self.framing);
        if self.framing != Framing::Upstream && self.traceparent_wanted != self.traceparent_sent {
            let set = match &self.traceparent_wanted {
                Some(tp) => format!("export TRACEPARENT={}; ", shell_quote(tp)),
                None => "unset TRACEPARENT; ".to_string(),
            };
            line.insert_str(0, &set);
            self.traceparent_sent = self.traceparent_wanted.clone();
        }
        self.send_raw(line.as_bytes())?;
        if reply == Reply::Nothing {
            self.owed_lines = lines;
            return Ok((-2, Vec::new()));
        }
        self.owed_lines = lines;
        if self.framing == Framing::Segments {
            let (output, status) = self.read_segments(deadline)?;
            self.owed_lines -= 1;
            return Ok((status.unwrap_or(-1), output));
        }
        let first = self.read_line(deadline)?;
        self.owed_lines -= 1;
        let (encoded, status_text) = match (reply, self.framing) {
            (Reply::OutputOnly, _) => (first, None),
            (_, Framing::Upstream) => {
                self.send_raw(UPSTREAM_STATUS_QUERY.as_bytes())?;
                self.owed_lines += 1;
                let status = self.read_line(deadline)?;
                self.owed_lines -= 1;
                (first, Some(status))
            }
            (_, Framing::Fast | Framing::Segments) => {
                match first.iter().rposition(|&b| b == b' ') {
                    Some(i) => (first[..i].to_vec(), Some(first[i + 1..].to_vec())),
                    None => {
                        return Err(ShellError::Protocol(format!(
                            "expected `<base64> <status>`, got {:?}",
                            String::from_utf8_lossy(&first[..first.len().min(200)])
                        )))
                    }
                }
            }
        };
        let output = decode(&encoded)?;
        let Some(status_line) = status_text else {
            return Ok((-1, output));
        };
        let text = String::from_utf8_lossy(&status_line);
        let status = text.trim().parse::<i32>().map_err(|_| {
            ShellError::Protocol(format!("expected an exit status, got {:?}", text.trim()))
        })?;
        Ok((status, output))
    }

    /// Reads one [`Framing::Segments`] reply: the output, and the status when one was sent.
    /// Nothing is consumed from the buffer until the reply is complete, so an interrupted read
    /// leaves it whole for the next try.
    fn read_segments(&mut self, deadline: Deadline) -> Result<(Vec<u8>, Option<i32>), ShellError> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match parse_segment(&self.buf[pos..])? {
                Segment::Incomplete => {
                    if !self.fill(deadline)? && deadline.expired() {
                        return Err(ShellError::TimedOut);
                    }
                }
                Segment::Data(range, used) => {
                    out.extend_from_slice(&self.buf[pos + range.start..pos + range.end]);
                    pos += used;
                }
                Segment::Nul => {
                    out.push(0);
                    pos += 1;
                }
                Segment::Base64(range, used) => {
                    out.extend(decode(&self.buf[pos + range.start..pos + range.end])?);
                    pos += used;
                }
                Segment::End(status, used) => {
                    self.buf.drain(..pos + used);
                    return Ok((out, status));
                }
            }
        }
    }

    /// Reads one `\n`-terminated line (without the newline).
    fn read_line(&mut self, deadline: Deadline) -> Result<Vec<u8>, ShellError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[scanned..]) {
                let end = scanned + i;
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.truncate(end);
                return Ok(line);
            }
            scanned = self.buf.len();
            if !self.fill(deadline)? && deadline.expired() {
                return Err(ShellError::TimedOut);
            }
        }
    }

    /// One read into the buffer. `Ok(false)` when the slice passed without data.
    fn fill(&mut self, deadline: Deadline) -> Result<bool, ShellError> {
        if interrupt::pending().is_some() {
            return Err(ShellError::Interrupted);
        }
        if deadline.expired() {
            return Ok(false);
        }
        self.stream.set_read_timeout(Some(deadline.slice()))?;
        match self.stream.read(&mut self.scratch) {
            Ok(0) => Err(ShellError::Disconnected),
            Ok(n) => {
                self.buf.extend_from_slice(&self.scratch[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ShellError::Disconnected),
            Err(e) => Err(ShellError::Io(e)),
        }
    }

    /// A second handle on the stream (to wake a blocked reader by shutting it down).
    pub fn clone_stream(&self) -> io::Result<Stream> {
        self.stream.try_clone_stream()
    }

    /// After the guest was rewound (a snapshot restored): forgets what was in flight, and
    /// reads until the answer to a marker command, so the next command reads its own reply.
    pub fn resync(&mut self, deadline: Deadline) -> Result<(), ShellError> {
        self.buf.clear();
        self.owed_lines = 0;
        // a restored guest's shell has the environment of its snapshot
        self.traceparent_sent = None;
        let token = format!(
            "ntng-resync-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        );
        let token: String = token.chars().filter(char::is_ascii_alphanumeric).collect();
        // Split in two in the command, so that an echo of the line itself cannot match.
        let (a, b) = token.split_at(token.len() / 2);
        self.send_raw(format!("echo {a}''{b}\n").as_bytes())?;
        let line = format!("{token}\n");
        loop {
            if let Some(i) = find(&self.buf, line.as_bytes()) {
                self.buf.drain(..i + line.len());
                return Ok(());
            }
            if !self.fill(deadline)? && deadline.expired() {
                return Err(ShellError::TimedOut);
            }
        }
    }

    /// What has been read and not consumed yet.
    pub(crate) fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` bytes of the buffer.
    pub(crate) fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }

    /// One read into the buffer, for callers that handle the interrupt flag themselves:
    /// `Err(Interrupted)` only says that it is set.
    pub(crate) fn fill_quietly(&mut self, deadline: Deadline) -> Result<bool, ShellError> {
        self.fill(deadline)
    }
}

fn map_write_err(e: io::Error) -> ShellError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ShellError::Disconnected,
        _ => ShellError::Io(e),
    }
}

fn decode(encoded: &[u8]) -> Result<Vec<u8>, ShellError> {
    let trimmed = encoded.trim_ascii();
    base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .map_err(|e| {
            let shown = String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)]).into_owned();
            ShellError::Protocol(format!("output is not base64 ({e}): {shown:?}"))
        })
}

/// One piece of a [`Framing::Segments`] reply at the start of a buffer; ranges and lengths
/// are relative to that start.
#[derive(Debug, PartialEq)]
enum Segment {
    Incomplete,
    /// Raw bytes, and the length of the whole segment.
    Data(std::ops::Range<usize>, usize),
    Nul,
    /// Base64 text up to the terminator (not included in the length).
    Base64(std::ops::Range<usize>, usize),
    /// The terminator: ` <status>\n`, or `\n` when no status was asked for.
    End(Option<i32>, usize),
}

fn parse_segment(buf: &[u8]) -> Result<Segment, ShellError> {
    let protocol = |what: &str| {
        let shown = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
        ShellError::Protocol(format!("{what} in the container's reply: {shown:?}"))
    };
    let Some(&tag) = buf.first() else {
        return Ok(Segment::Incomplete);
    };
    match tag {
        b'D' => {
            let Some(colon) = memchr(b':', buf) else {
                return if buf.len() > 12 {
                    Err(protocol("a segment without a length"))
                } else {
                    Ok(Segment::Incomplete)
                };
            };
            let len: usize = std::str::from_utf8(&buf[1..colon])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| protocol("a bad segment length"))?;
            let start = colon + 1;
            if buf.len() < start + len {
                return Ok(Segment::Incomplete);
            }
            Ok(Segment::Data(start..start + len, start + len))
        }
        b'Z' => Ok(Segment::Nul),
        b'B' => match buf.iter().position(|&b| b == b' ' || b == b'\n') {
            Some(end) => Ok(Segment::Base64(1..end, end)),
            None => Ok(Segment::Incomplete),
        },
        b'\n' => Ok(Segment::End(None, 1)),
        b' ' => match memchr(b'\n', buf) {
            Some(end) => {
                let text = String::from_utf8_lossy(&buf[1..end]);
                let status = text
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| protocol("a bad exit status"))?;
                Ok(Segment::End(Some(status), end + 1))
            }
            None => Ok(Segment::Incomplete),
        },
        _ => Err(protocol("an unknown segment")),
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    /// A fake guest: a local bash serving the backdoor protocol on a socket pair.
    pub fn fake_guest() -> (Shell, crate::process::ChildProcess) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let stdout = theirs.try_clone().unwrap();
        let mut cmd = Command::new("bash");
        cmd.args([
            "--norc",
            "-c",
            "cd /tmp; echo 'connecting to host...' >&2; echo 'Spawning backdoor root shell...'; PS1= exec bash --norc",
        ])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(stdout)))
        .stderr(Stdio::null());
        let child = crate::process::spawn(cmd).unwrap();
        let mut shell = Shell::new(ours);
        let deadline = Deadline::after(Some(Duration::from_secs(10)));
        shell.wait_for_handshake(deadline, &mut || true).unwrap();
        (shell, child)
    }

    fn both_framings(check: impl Fn(&mut Shell)) {
        for framing in [Framing::Fast, Framing::Upstream, Framing::Segments] {
            let (mut shell, _child) = fake_guest();
            shell.framing = framing;
            if framing == Framing::Segments {
                shell.send_raw(SEGMENTS_ENCODER.as_bytes()).unwrap();
            }
            check(&mut shell);
        }
    }

    fn segments_guest() -> (Shell, crate::process::ChildProcess) {
        let (shell, child) = fake_guest();
        let mut shell = shell.with_raw_output();
        shell.send_raw(SEGMENTS_ENCODER.as_bytes()).unwrap();
        (shell, child)
    }

    fn run(shell: &mut Shell, cmd: &str) -> (i32, Vec<u8>) {
        shell
            .execute(
                cmd,
                None,
                Reply::Full,
                Deadline::after(Some(Duration::from_secs(30))),
            )
            .unwrap()
    }

    #[test]
    fn raw_bytes_round_trip_and_framed_commands_still_work() {
        let (mut shell, _child) = fake_guest();
        shell.send_raw(b"echo raw-hello\n").unwrap();
        let deadline = Deadline::after(Some(Duration::from_secs(10)));
        let mut got = Vec::new();
        while !got.ends_with(b"raw-hello\n") {
            let chunk = shell.recv_raw(4, deadline).unwrap();
            assert!(!chunk.is_empty() && chunk.len() <= 4, "{chunk:?}");
            got.extend(chunk);
        }
        assert_eq!(got, b"raw-hello\n");
        let nothing = shell.recv_raw(64, Deadline::after(Some(Duration::from_millis(50))));
        assert_eq!(nothing.unwrap(), b"");
        assert_eq!(run(&mut shell, "echo framed"), (0, b"framed\n".to_vec()));
    }

    #[test]
    fn quote_matches_python_shlex() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("abc/d-e.f"), "abc/d-e.f");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn lines_sent_for_each_framing() {
        assert_eq!(
            command_line("true", None, Reply::Full, Framing::Upstream),
            (
                " bash -c 'set -euo pipefail; true' | (base64 -w 0; echo)\n".to_string(),
                1
            )
        );
        assert_eq!(
            command_line(
                "true",
                Some(Duration::from_secs(900)),
                Reply::OutputOnly,
                Framing::Upstream
            )
            .0,
            "timeout 900 bash -c 'set -euo pipefail; true' | (base64 -w 0; echo)\n"
        );
        assert_eq!(
            command_line("true", None, Reply::Full, Framing::Fast),
            (
                "( eval 'set -euo pipefail; true' ) | base64 -w 0; echo \" ${PIPESTATUS[0]}\"\n"
                    .to_string(),
                1
            )
        );
        assert_eq!(
            command_line("x", Some(Duration::from_millis(1500)), Reply::Full, Framing::Fast).0,
            "timeout 1.500 bash -c 'set -euo pipefail; x' | base64 -w 0; echo \" ${PIPESTATUS[0]}\"\n"
        );
    }

    #[test]
    fn status_output_and_nasty_bytes() {
        both_framings(status_output_and_nasty_bytes_with);
    }

    fn status_output_and_nasty_bytes_with(shell: &mut Shell) {
        assert_eq!(run(shell, "echo hi"), (0, b"hi\n".to_vec()));
        assert_eq!(run(shell, "exit 42").0, 42);
        assert_eq!(run(shell, "false; echo not reached").0, 1);
        let (rc, out) = run(shell, "printf '\\xff\\x00\\n0\\necho ${PIPESTATUS[0]}\\n'");
        assert_eq!(rc, 0);
        assert_eq!(out, b"\xff\x00\n0\necho ${PIPESTATUS[0]}\n");
        assert_eq!(run(shell, "echo \"it's\" 'a \"b\"'").1, b"it's a \"b\"\n");
        // no state leaks between commands; $$ stays a number
        run(shell, "cd /; X=1");
        assert_eq!(run(shell, "pwd; echo ${X:-unset}").1, b"/tmp\nunset\n");
        assert!(String::from_utf8(run(shell, "echo $$").1)
            .unwrap()
            .trim()
            .parse::<u32>()
            .is_ok());
        // a syntax error is the command's failure, not a protocol error
        assert_eq!(run(shell, "if then").0, 2);
        assert_eq!(run(shell, "echo after").1, b"after\n");
    }

    #[test]
    fn traceparent_is_exported_once_per_change() {
        both_framings(|shell| {
            if shell.framing == Framing::Upstream {
                // upstream's bytes only: the guest gets no TRACEPARENT
                shell.set_traceparent(Some(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ));
                assert_eq!(run(shell, "echo ${TRACEPARENT:-none}").1, b"none\n");
            } else {
                traceparent_with(shell);
            }
        });
    }

    /// A guest played by the test: it checks each line the shell sends, in order, and answers
    /// it; a line must arrive only after the answer to the previous one. An answer marked
    /// `hold` waits for a message on the returned channel first.
    fn scripted_guest(
        exchanges: Vec<(String, &'static str, bool)>,
    ) -> (
        Shell,
        crossbeam_channel::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (release, held) = crossbeam_channel::unbounded::<()>();
        let guest = std::thread::spawn(move || {
            theirs
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            for (expected, answer, hold) in exchanges {
                let mut got = Vec::new();
                let mut byte = [0u8; 1];
                while !got.ends_with(b"\n") {
                    assert_eq!(theirs.read(&mut byte).unwrap(), 1, "the shell hung up");
                    got.push(byte[0]);
                }
                assert_eq!(String::from_utf8(got).unwrap(), expected);
                if hold {
                    held.recv_timeout(Duration::from_secs(30)).unwrap();
                }
                // nothing else may be in flight before the answer
                theirs.set_nonblocking(true).unwrap();
                let early = theirs.read(&mut byte);
                assert!(
                    matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                    "the shell sent more before the answer: {early:?}"
                );
                theirs.set_nonblocking(false).unwrap();
                theirs.write_all(answer.as_bytes()).unwrap();
            }
        });
        (Shell::with_framing(ours, Framing::Upstream), release, guest)
    }

    #[test]
    fn upstream_framing_sends_upstreams_exact_bytes() {
        let deadline = || Deadline::after(Some(Duration::from_secs(30)));
        let (mut shell, _, guest) = scripted_guest(vec![
            (
                // Python's shlex.quote of the command, as upstream sends it
                r#" bash -c 'set -euo pipefail; echo hi'"'"' there' | (base64 -w 0; echo)"#
                    .to_string()
                    + "\n",
                "aGkK\n",
                false,
            ),
            ("echo ${PIPESTATUS[0]}\n".to_string(), "0\n", false),
            (
                "timeout 900 bash -c 'set -euo pipefail; exit 3' | (base64 -w 0; echo)\n"
                    .to_string(),
                "\n",
                false,
            ),
            ("echo ${PIPESTATUS[0]}\n".to_string(), "3\n", false),
            // check_return=False: no status query
            (
                " bash -c 'set -euo pipefail; reboot' | (base64 -w 0; echo)\n".to_string(),
                "\n",
                false,
            ),
        ]);
        shell.set_traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ));
        let r = shell.execute("echo hi' there", None, Reply::Full, deadline());
        assert_eq!(r.unwrap(), (0, b"hi\n".to_vec()));
        let r = shell.execute(
            "exit 3",
            Some(Duration::from_secs(900)),
            Reply::Full,
            deadline(),
        );
        assert_eq!(r.unwrap(), (3, Vec::new()));
        let r = shell.execute("reboot", None, Reply::OutputOnly, deadline());
        assert_eq!(r.unwrap(), (-1, Vec::new()));
        guest.join().unwrap();
    }

    #[test]
    fn upstream_framing_recovers_from_an_abandoned_status_query() {
        let line =
            |cmd: &str| format!(" bash -c 'set -euo pipefail; {cmd}' | (base64 -w 0; echo)\n");
        let query = || UPSTREAM_STATUS_QUERY.to_string();
        let (mut shell, release, guest) = scripted_guest(vec![
            (line("true"), "\n", false),
            // the status of `true` comes only after the shell gave up waiting for it
            (query(), "0\n", true),
            (line("echo mine"), "bWluZQo=\n", false),
            (query(), "4\n", false),
        ]);
        let r = shell.execute(
            "true",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_millis(200))),
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
        release.send(()).unwrap();
        assert_eq!(run(&mut shell, "echo mine"), (4, b"mine\n".to_vec()));
        guest.join().unwrap();
    }

    #[test]
    fn every_framing_recovers_from_an_abandoned_command() {
        both_framings(|shell| {
            let r = shell.execute(
                "sleep 0.3",
                None,
                Reply::Full,
                Deadline::after(Some(Duration::from_millis(100))),
            );
            assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
            assert_eq!(run(shell, "echo mine; exit 4"), (4, b"mine\n".to_vec()));
        });
    }

    fn traceparent_with(shell: &mut Shell) {
        let a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let b = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";
        shell.set_traceparent(Some(a.into()));
        assert_eq!(
            run(shell, "sh -c 'echo $TRACEPARENT'").1,
            format!("{a}\n").as_bytes()
        );
        // still exported in the persistent shell, without being sent again
        assert_eq!(shell.traceparent_sent.as_deref(), Some(a));
        assert_eq!(
            run(shell, "echo $TRACEPARENT").1,
            format!("{a}\n").as_bytes()
        );
        shell.set_traceparent(Some(b.into()));
        assert_eq!(
            run(shell, "echo $TRACEPARENT").1,
            format!("{b}\n").as_bytes()
        );
        shell.set_traceparent(None);
        assert_eq!(run(shell, "echo ${TRACEPARENT:-none}").1, b"none\n");
    }

    #[test]
    fn large_output() {
        both_framings(large_output_with);
    }

    fn large_output_with(shell: &mut Shell) {
        let (rc, out) = run(shell, "head -c 20000000 /dev/zero | tr '\\0' a");
        assert_eq!(rc, 0);
        assert_eq!(out.len(), 20_000_000);
        assert!(out.iter().all(|&b| b == b'a'));
    }

    #[test]
    fn guest_dying_mid_command_is_disconnected() {
        let (mut shell, child) = fake_guest();
        let pid = child.pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: kills our own test child group.
            unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
        });
        let r = shell.execute("sleep 30", None, Reply::Full, Deadline::NEVER);
        assert!(matches!(r, Err(ShellError::Disconnected)), "{r:?}");
    }

    #[test]
    fn deadline_is_honoured() {
        let (mut shell, _child) = fake_guest();
        // without the deadline, the command's answer would come after 30 s
        let r = shell.execute(
            "sleep 30",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_millis(300))),
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
    }

    #[test]
    fn an_abandoned_command_does_not_desync_the_next() {
        let (mut shell, _child) = fake_guest();
        let r = shell.execute(
            "sleep 0.5; echo late",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_millis(100))),
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
        assert_eq!(run(&mut shell, "echo mine"), (0, b"mine\n".to_vec()));
    }

    #[test]
    fn guest_timeout_gives_status() {
        let (mut shell, _child) = fake_guest();
        let (rc, _) = shell
            .execute(
                "sleep 10",
                Some(Duration::from_secs(1)),
                Reply::Full,
                Deadline::NEVER,
            )
            .unwrap();
        assert_eq!(rc, 124);
    }

    #[test]
    fn segments_round_trip_every_size_and_nul_pattern() {
        let (mut shell, _child) = segments_guest();
        assert_eq!(run(&mut shell, "true"), (0, Vec::new()));
        assert_eq!(run(&mut shell, "printf '\\0'"), (0, vec![0]));
        assert_eq!(
            run(&mut shell, "printf 'a\\0\\0b '; exit 3"),
            (3, b"a\0\0b ".to_vec())
        );
        for n in [4095, 4096, 4097, 10_000] {
            let (rc, out) = run(&mut shell, &format!("head -c {n} /dev/zero | tr '\\0' x"));
            assert_eq!((rc, out.len()), (0, n), "{n} bytes");
            assert!(out.iter().all(|&b| b == b'x'));
            // NULs: each is a segment of its own until 4 KiB, then base64 takes over
            let (rc, out) = run(&mut shell, &format!("head -c {n} /dev/zero"));
            assert_eq!((rc, out), (0, vec![0; n]), "{n} NULs");
        }
        let (_, out) = run(&mut shell, "printf 'D9:B Z\\n 0\\n'; printf '\\xff\\xfe'");
        assert_eq!(out, b"D9:B Z\n 0\n\xff\xfe");
    }

    #[test]
    fn segments_output_only_and_abandoned_commands() {
        let (mut shell, _child) = segments_guest();
        let r = shell.execute("echo bye", None, Reply::OutputOnly, Deadline::NEVER);
        assert_eq!(r.unwrap(), (-1, b"bye\n".to_vec()));
        let r = shell.execute(
            "sleep 0.5; printf 'late\\n 0\\n'",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_millis(100))),
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
        assert_eq!(run(&mut shell, "echo mine"), (0, b"mine\n".to_vec()));
        assert_eq!(
            shell
                .execute("true", None, Reply::Nothing, Deadline::NEVER)
                .unwrap()
                .0,
            -2
        );
        assert_eq!(run(&mut shell, "echo next"), (0, b"next\n".to_vec()));
    }

    #[test]
    fn segment_parser_rejects_garbage() {
        assert!(matches!(
            parse_segment(b"Dx:"),
            Err(ShellError::Protocol(_))
        ));
        assert!(matches!(parse_segment(b"?"), Err(ShellError::Protocol(_))));
        assert_eq!(parse_segment(b"D5:ab").unwrap(), Segment::Incomplete);
        assert_eq!(parse_segment(b"D2:ab").unwrap(), Segment::Data(3..5, 5));
        assert_eq!(parse_segment(b" 7\n").unwrap(), Segment::End(Some(7), 3));
    }
}
