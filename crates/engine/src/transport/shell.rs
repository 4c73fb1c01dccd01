//! The NixOS shell backdoor: a bash reading commands from a virtio console.
//!
//! Framing: by default ([`Framing::Raw`]) a command runs in a subshell of the backdoor bash,
//! piped into a function that the shell itself runs (`lastpipe`; [`RAW_ENCODER`], sent once),
//! which copies the output raw to the stream: with builtins up to 2 KiB (no process at all),
//! then with `cat`.
//! A random marker ends the output, with the exit status: `<nonce>E<status>\n`. Each command
//! costs one round trip and one process (the command's own). The stream must be 8-bit clean:
//! NixOS's backdoor puts hvc0 in raw mode (`stty raw -echo`), and a container's socket pair is.
//!
//! QEMU drops what a virtio *console* writes while the host's socket is full, so on a console
//! (the shell's stdin is a tty) the bulk goes in chunks (of [`ACK_EVERY`] bytes, or more where
//! the driver could enlarge QEMU's socket: `qemu::console_socket`), each after the
//! host acknowledged the one before it with an empty line: never more than one chunk in
//! flight. The host acknowledges on every stream (an empty line is nothing to bash).
//!
//! [`Framing::Base64`] (`NIXOS_TEST_NG_SHELL_FRAMING=base64`, for a console that is not raw)
//! runs the command in a subshell piped into `base64`, the exit status on the output's line.
//! [`Framing::Upstream`] sends upstream's bytes exactly: `bash -c '<cmd>' | (base64 -w 0; echo)`,
//! and once the output line is read, a second line `echo ${PIPESTATUS[0]}` (two round trips).
//!
//! In every framing the command's stdout is a pipe that the shell reads to its end, as
//! upstream's: a background child holding it open keeps the command waiting.

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
    /// The output raw, copied by [`RAW_ENCODER`]'s function, then `<nonce>E<status>\n`. For
    /// 8-bit clean streams only.
    Raw,
    /// A subshell of the backdoor bash (`( eval '…' )`) when no timeout is asked for, piped
    /// into `base64`, and the exit status on the output's line.
    Base64,
    /// Upstream's exact bytes: `bash -c '…' | (base64 -w 0; echo)`, then, after the output
    /// line came back, [`UPSTREAM_STATUS_QUERY`]. Nothing else is sent (no `TRACEPARENT`).
    Upstream,
}

impl Framing {
    /// `NIXOS_TEST_NG_SHELL_FRAMING`: `upstream` or `base64` forces that framing; otherwise
    /// `None` (the stream decides: [`Framing::Raw`] when it is 8-bit clean).
    pub fn from_env() -> Option<Framing> {
        match std::env::var("NIXOS_TEST_NG_SHELL_FRAMING").as_deref() {
            Ok("upstream") => Some(Framing::Upstream),
            Ok("base64") => Some(Framing::Base64),
            _ => None,
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
/// Run once in a container's shell before its handshake: the profile, and, when PID 1 is
/// systemd, a wait for its private bus socket, so that the first command may be a
/// `systemctl` (upstream's first command races systemd's start-up and can fail with "Host is
/// down").
pub const CONTAINER_SETUP: &str = concat!(
    "source /etc/profile >/dev/null 2>&1 </dev/null; set +eu\n",
    "read -r _init </proc/1/comm; if [ \"$_init\" = systemd ]; then ",
    "until [ -S /run/systemd/private ]; do sleep 0.01; done; fi; unset _init\n"
);

/// The bash functions of [`Framing::Raw`] (one line, sent once per shell). `__ntng_out`
/// copies a command's output from its stdin to its stdout unchanged: an output shorter than
/// 2 KiB without a NUL with one `read` (no process), which is most short answers; otherwise
/// that `read`'s part, then the rest with `__ntng_bulk` (bash reads a pipe one byte per system
/// call, and under TCG each builtin it runs costs as much as a hundred bytes read). `read -d
/// ''` stops at a NUL, which bash strings cannot hold: it is printed back. Bytes are counted
/// in the C locale. `__ntng_bulk` is `cat`,
/// or on a console (fd 3, the shell's stdin, is a tty; `__ntng_pace` set: for tests) `dd`
/// chunks of the shell's pacing chunk ([`raw_encoder`] puts it in place of `@CHUNK@`; by
/// default [`ACK_EVERY`] bytes), each but the first after one byte more was found (not the
/// end) and the host's acknowledgement (an empty line on fd 3) came; a `dd` without
/// `iflag=fullblock` (whose short reads would leave the host's count behind) fails at once,
/// and `cat` copies instead. `lastpipe` runs the last
/// command of a pipeline in the shell itself (no process for it); commands run without it.
const RAW_ENCODER: &str = "shopt -s lastpipe; __ntng_out() { local LC_ALL=C c; \
     if IFS= read -r -d '' -n 2048 c; then \
     if [ ${#c} -lt 2048 ]; then printf '%s\\0' \"$c\"; else printf %s \"$c\"; fi; \
     __ntng_bulk; else printf %s \"$c\"; fi; }; \
     __ntng_bulk() { [ -t 3 ] || [ -n \"${__ntng_pace-}\" ] || { cat; return; }; local c a; \
     while dd bs=@CHUNK@ count=1 iflag=fullblock 2>/dev/null || { cat; return; }; \
     IFS= read -r -d '' -n 1 c || { printf %s \"$c\"; return; }; do \
     IFS= read -r -u 3 a; if [ -n \"$c\" ]; then printf %s \"$c\"; else printf '\\0'; fi; done; }; ";

/// [`RAW_ENCODER`] for a pacing chunk of `chunk` bytes.
pub fn raw_encoder(chunk: usize) -> String {
    RAW_ENCODER.replace("@CHUNK@", &chunk.to_string())
}

/// The default chunk of [`RAW_ENCODER`]'s paced bulk: the host sends an empty line each time it
/// has received this many more bytes of a reply. One chunk in flight (and at most 2 KiB before
/// it) must fit QEMU's socket with room to spare: 212992 bytes of send buffer by default,
/// against which the kernel charges each write's buffers, more than its data. 128 KiB chunks
/// did not: under load a 1 MB and a 100 MB reply each lost bytes and hung (2 in one bench).
/// A QEMU whose socket the driver enlarged gets a bigger chunk ([`Shell::with_pace_chunk`]).
pub const ACK_EVERY: usize = 32_768;

/// The longest line the host reads whole from the guest's shell: an exit status, or what
/// follows a base64 output (outputs are decoded as they arrive, never held as a line).
pub const MAX_LINE: usize = 4096;

/// What [`RAW_ENCODER`] sends before its paced chunks: up to 2048 bytes of the output's head.
const PACED_HEAD: usize = 2048;

/// What [`command_line`] sends for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The line, `\n`-terminated.
    pub line: String,
    /// Lines of reply it produces ([`Framing::Base64`], [`Framing::Upstream`]).
    pub lines: usize,
    /// The marker of its reply ([`Framing::Raw`]).
    pub nonce: Option<String>,
}

/// Builds the line sent for one command. With [`Framing::Upstream`] that is the first of
/// upstream's two lines; [`Shell::execute`] sends [`UPSTREAM_STATUS_QUERY`] after reading its
/// reply when the status is wanted. With [`Framing::Raw`], fd 3 of `__ntng_out` is the
/// shell's stdin, which the command does not get (nor `lastpipe`).
pub fn command_line(
    preamble: &str,
    command: &str,
    timeout: Option<Duration>,
    reply: Reply,
    framing: Framing,
) -> CommandLine {
    let script = shell_quote(&format!("{preamble}{command}"));
    let timed = timeout.map(|t| format!("timeout {} bash -c {script}", timeout_arg(t)));
    let run = |untimed: String| timed.clone().unwrap_or(untimed);
    let raw_run = match &timed {
        Some(timed) => format!("{timed} 3<&-"),
        None => format!("( shopt -u lastpipe; exec 3<&-; eval {script} )"),
    };
    let base64 = |line: String| CommandLine {
        line,
        lines: 1,
        nonce: None,
    };
    match (framing, reply) {
        (Framing::Upstream, _) => base64(format!(
            "{} | (base64 -w 0; echo)\n",
            run(format!(" bash -c {script}"))
        )),
        (Framing::Base64, Reply::Full) => base64(format!(
            "{} | base64 -w 0; echo \" ${{PIPESTATUS[0]}}\"\n",
            run(format!("( eval {script} )"))
        )),
        (Framing::Base64, _) => base64(format!(
            "{} | base64 -w 0; echo\n",
            run(format!("( eval {script} )"))
        )),
        (Framing::Raw, _) => {
            let nonce = new_nonce();
            let end = if reply == Reply::OutputOnly {
                format!("printf '{nonce}E\\n'")
            } else {
                format!("printf '{nonce}E%d\\n' ${{PIPESTATUS[0]}}")
            };
            CommandLine {
                line: format!("{{ {raw_run} | __ntng_out; {end}; }} 3<&0\n"),
                lines: 0,
                nonce: Some(nonce),
            }
        }
    }
}

/// 16 random hex digits: the marker ending one [`Framing::Raw`] reply. A command cannot see
/// it (it is not in the command's environment), so its output cannot forge it.
fn new_nonce() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    // SAFETY: a buffer of 8 writable bytes.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let value = if got == bytes.len() as isize {
        u64::from_ne_bytes(bytes)
    } else {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.finish()
    };
    format!("{value:016x}")
}

/// A connected backdoor shell, over any byte stream (see [`super::connector`]).
pub struct Shell {
    stream: Stream,
    buf: Vec<u8>,
    scratch: Box<[u8]>,
    framing: Framing,
    /// The framing was forced (`NIXOS_TEST_NG_SHELL_FRAMING`): the stream does not change it.
    forced: bool,
    preamble: &'static str,
    /// Reply lines of an abandoned command (interrupted or timed out) still to be skipped, so
    /// the next command reads its own answer.
    owed_lines: usize,
    /// With [`Framing::Raw`]: the marker of a reply not read to its end yet (an abandoned
    /// command's, or one not waited for), and the acknowledgements sent for it so far.
    owed_reply: Option<String>,
    acks_sent: usize,
    /// The bytes of a paced reply per acknowledgement ([`ACK_EVERY`] unless told otherwise).
    pace_chunk: usize,
    /// The reply being read comes from a guest that does not pace: no acknowledgements.
    unpaced: bool,
    /// The guest's shell has [`RAW_ENCODER`]'s function (sent with the first command).
    encoder_sent: bool,
    /// `TRACEPARENT` as the next commands should see it, and as the guest's persistent shell
    /// has it exported: sent again only when it changes, since every byte of a command line
    /// costs time in a guest under TCG.
    traceparent_wanted: Option<String>,
    traceparent_sent: Option<String>,
}

impl Shell {
    /// Wraps a connected stream, with the framing of the environment (else
    /// [`Framing::Base64`], until [`Shell::with_raw_output`]).
    pub fn new(stream: impl Into<Stream>) -> Self {
        let forced = Framing::from_env();
        let mut shell = Shell::with_framing(stream, forced.unwrap_or(Framing::Base64));
        shell.forced = forced.is_some();
        shell
    }

    /// Wraps a connected stream, with the given framing.
    pub fn with_framing(stream: impl Into<Stream>, framing: Framing) -> Self {
        let stream = stream.into();
        Shell {
            framing,
            forced: true,
            preamble: VM_PREAMBLE,
            traceparent_wanted: None,
            traceparent_sent: None,
            stream,
            buf: Vec::new(),
            scratch: vec![0u8; 256 * 1024].into_boxed_slice(),
            owed_lines: 0,
            owed_reply: None,
            acks_sent: 0,
            pace_chunk: ACK_EVERY,
            unpaced: false,
            encoder_sent: false,
        }
    }

    /// Paces a console's replies by `bytes` per acknowledgement: what the other end's socket
    /// holds with room to spare (see `qemu::console_socket`).
    pub fn with_pace_chunk(mut self, bytes: usize) -> Self {
        self.pace_chunk = bytes.max(1);
        self.encoder_sent = false;
        self
    }

    /// Uses `preamble` before every command instead of the VM's.
    pub fn with_preamble(mut self, preamble: &'static str) -> Self {
        self.preamble = preamble;
        self
    }

    /// The stream is 8-bit clean: uses [`Framing::Raw`], unless a framing was forced.
    pub fn with_raw_output(mut self) -> Self {
        if !self.forced {
            self.framing = Framing::Raw;
        }
        self
    }

    /// The bytes of a paced reply per acknowledgement.
    pub fn pace_chunk(&self) -> usize {
        self.pace_chunk
    }

    /// The framing in use.
    pub fn framing(&self) -> Framing {
        self.framing
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
                self.owed_reply = None;
                self.encoder_sent = false;
                return Ok(());
            }
            // what the guest prints before the handshake is noise: only a partial handshake
            // at the end is kept, however much comes
            self.keep_tail(HANDSHAKE.len() - 1);
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
        self.settle(deadline)?;
        let CommandLine {
            mut line,
            lines,
            nonce,
        } = command_line(self.preamble, command, timeout, reply, self.framing);
        if self.framing == Framing::Raw && !self.encoder_sent {
            line.insert_str(0, &raw_encoder(self.pace_chunk));
            self.encoder_sent = true;
        }
        if self.framing != Framing::Upstream && self.traceparent_wanted != self.traceparent_sent {
            let set = match &self.traceparent_wanted {
                Some(tp) => format!("export TRACEPARENT={}; ", shell_quote(tp)),
                None => "unset TRACEPARENT; ".to_string(),
            };
            line.insert_str(0, &set);
            self.traceparent_sent = self.traceparent_wanted.clone();
        }
        self.send_raw(line.as_bytes())?;
        self.owed_lines = lines;
        self.acks_sent = 0;
        self.unpaced = false;
        self.owed_reply = nonce.clone();
        if reply == Reply::Nothing {
            return Ok((-2, Vec::new()));
        }
        if let Some(nonce) = nonce {
            let (output, status) = self.read_raw(&nonce, deadline)?;
            self.owed_reply = None;
            return Ok((status.unwrap_or(-1), output));
        }
        let (output, tail) = self.read_base64_line(deadline)?;
        self.owed_lines -= 1;
        let status_text = match (reply, self.framing) {
            (Reply::OutputOnly, _) => None,
            (_, Framing::Upstream) => {
                self.send_raw(UPSTREAM_STATUS_QUERY.as_bytes())?;
                self.owed_lines += 1;
                let status = self.read_line(deadline)?;
                self.owed_lines -= 1;
                Some(status)
            }
            _ => match tail.strip_prefix(b" ") {
                Some(status) => Some(status.to_vec()),
                None => {
                    return Err(ShellError::Protocol(format!(
                        "expected `<base64> <status>`, got {:?} after the output",
                        String::from_utf8_lossy(&tail)
                    )))
                }
            },
        };
        if status_text.is_none() && !tail.trim_ascii().is_empty() {
            return Err(ShellError::Protocol(format!(
                "output is not base64: {:?} after it",
                String::from_utf8_lossy(&tail)
            )));
        }
        let Some(status_line) = status_text else {
            return Ok((-1, output));
        };
        let status = parse_status(&status_line)?;
        Ok((status, output))
    }

    /// Reads what earlier commands still owe (see [`Shell::execute`]), so that the guest's
    /// shell reads the next line as a command: a paced reply waits for acknowledgements.
    pub(crate) fn settle(&mut self, deadline: Deadline) -> Result<(), ShellError> {
        if let Some(nonce) = self.owed_reply.clone() {
            self.read_raw(&nonce, deadline)?;
            self.owed_reply = None;
        }
        while self.owed_lines > 0 {
            self.skip_line(deadline)?;
            self.owed_lines -= 1;
        }
        Ok(())
    }

    /// Reads one [`Framing::Raw`] reply, which starts at the start of the buffer: the output
    /// up to `<nonce>E`, and the status up to the newline (none when the line is empty),
    /// acknowledging every pacing chunk. Nothing is consumed until the reply is
    /// complete, so an interrupted read leaves it whole for the next try.
    fn read_raw(
        &mut self,
        nonce: &str,
        deadline: Deadline,
    ) -> Result<(Vec<u8>, Option<i32>), ShellError> {
        let end = format!("{nonce}E");
        let end = end.as_bytes();
        let mut scanned = 0;
        let at = loop {
            if let Some(i) = find(&self.buf[scanned..], end) {
                break scanned + i;
            }
            scanned = self.buf.len().saturating_sub(end.len() - 1);
            self.acknowledge()?;
            self.fill_or_time_out(deadline)?;
        };
        let mut scanned = at + end.len();
        let newline = loop {
            if let Some(i) = memchr(b'\n', &self.buf[scanned..]) {
                break scanned + i;
            }
            if self.buf.len() - at > end.len() + 16 {
                return Err(ShellError::Protocol(format!(
                    "expected an exit status after the output, got {:?}",
                    String::from_utf8_lossy(&self.buf[at + end.len()..])
                )));
            }
            scanned = self.buf.len();
            self.fill_or_time_out(deadline)?;
        };
        let status_text = &self.buf[at + end.len()..newline];
        let status = if status_text.is_empty() {
            None
        } else {
            Some(parse_status(status_text)?)
        };
        let rest = self.buf.split_off(newline + 1);
        let mut output = std::mem::replace(&mut self.buf, rest);
        output.truncate(at);
        Ok((output, status))
    }

    /// Sends the acknowledgements the buffered part of a [`Framing::Raw`] reply earned, while
    /// the guest paces. A guest that does not pace (its stdin is no console) reads no
    /// acknowledgement until the command ends: they pile up in its socket, one buffer each,
    /// and a blocking write of the next would wait for a guest that waits for us to read its
    /// reply (a hang, seen with 100 MB). So they are sent without blocking, and none are sent
    /// once one did not fit, or once the reply ran further ahead than a pacing guest's one
    /// chunk (after the head) beyond what was acknowledged.
    fn acknowledge(&mut self) -> Result<(), ShellError> {
        if self.buf.len() > (self.acks_sent + 2) * (self.pace_chunk + 1) + PACED_HEAD {
            self.unpaced = true;
        }
        let due = self.buf.len() / self.pace_chunk;
        while !self.unpaced && due > self.acks_sent {
            match self.stream.try_send(&b"\n".repeat(due - self.acks_sent)) {
                Ok(n) => self.acks_sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.unpaced = true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_write_err(e)),
            }
        }
        Ok(())
    }

    /// One read into the buffer; [`ShellError::TimedOut`] once the deadline passed.
    fn fill_or_time_out(&mut self, deadline: Deadline) -> Result<(), ShellError> {
        if !self.fill(deadline)? && deadline.expired() {
            return Err(ShellError::TimedOut);
        }
        Ok(())
    }

    /// Reads one `\n`-terminated line (without the newline) of at most [`MAX_LINE`] bytes:
    /// an exit status, or what follows a base64 output on its line.
    fn read_line(&mut self, deadline: Deadline) -> Result<Vec<u8>, ShellError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[scanned..]) {
                let end = scanned + i;
                if end > MAX_LINE {
                    return Err(line_too_long(&self.buf));
                }
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.truncate(end);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(line_too_long(&self.buf));
            }
            scanned = self.buf.len();
            self.fill_or_time_out(deadline)?;
        }
    }

    /// Reads one line of base64 ([`Framing::Base64`], [`Framing::Upstream`]), decoding it as
    /// it arrives: the base64 text held at once is at most what one read brings, and the
    /// output is the only copy. Returns the output and what follows the base64 on its line
    /// (the exit status, or nothing), without the newline. A read cut short (timed out,
    /// interrupted) leaves the rest of the line to [`Shell::settle`].
    fn read_base64_line(&mut self, deadline: Deadline) -> Result<(Vec<u8>, Vec<u8>), ShellError> {
        let mut output = Vec::new();
        let mut decoded = 0usize;
        loop {
            let end = self.buf.iter().position(|&b| !is_base64(b));
            let whole = match end {
                Some(i) => i,
                None => self.buf.len() / 4 * 4,
            };
            base64::engine::general_purpose::STANDARD
                .decode_vec(&self.buf[..whole], &mut output)
                .map_err(|e| {
                    let shown = &self.buf[..whole.min(200)];
                    ShellError::Protocol(format!(
                        "output is not base64 ({e} after {decoded} bytes of text): {:?}",
                        String::from_utf8_lossy(shown)
                    ))
                })?;
            decoded += whole;
            self.buf.drain(..whole);
            if end.is_some() {
                return Ok((output, self.read_line(deadline)?));
            }
            self.fill_or_time_out(deadline)?;
        }
    }

    /// Drops the rest of a line an abandoned command owes, holding none of it.
    fn skip_line(&mut self, deadline: Deadline) -> Result<(), ShellError> {
        loop {
            if let Some(i) = memchr(b'\n', &self.buf) {
                self.buf.drain(..=i);
                return Ok(());
            }
            self.buf.clear();
            self.fill_or_time_out(deadline)?;
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
        self.owed_reply = None;
        // a restored guest's shell has the environment of its snapshot, which may lack the
        // encoder (or hold an older one)
        self.traceparent_sent = None;
        self.encoder_sent = false;
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
            self.keep_tail(line.len() - 1);
            if !self.fill(deadline)? && deadline.expired() {
                return Err(ShellError::TimedOut);
            }
        }
    }

    /// Runs `command` in the guest's shell itself, not in a subshell, and returns its exit
    /// status and what it printed up to the marker line that ends it. For the driver's own
    /// first command after a restore, when TCG has translated none of the guest's code and a
    /// fork is dear. Its variables stay in the shell: `command` unsets what it sets. The
    /// stream must be in step ([`Shell::resync`]).
    pub fn execute_in_shell(
        &mut self,
        command: &str,
        deadline: Deadline,
    ) -> Result<(i32, Vec<u8>), ShellError> {
        self.settle(deadline)?;
        // the marker line of a raw reply, `<nonce>E<status>`, split so that no echo matches
        let nonce = new_nonce();
        let (a, b) = nonce.split_at(nonce.len() / 2);
        self.send_raw(format!("{command}\necho {a}''{b}E$?\n").as_bytes())?;
        self.acks_sent = 0;
        self.unpaced = false;
        self.owed_reply = Some(nonce.clone());
        let (output, status) = self.read_raw(&nonce, deadline)?;
        self.owed_reply = None;
        Ok((status.unwrap_or(-1), output))
    }

    /// Drops all but the last `n` bytes of the buffer.
    fn keep_tail(&mut self, n: usize) {
        let extra = self.buf.len().saturating_sub(n);
        self.buf.drain(..extra);
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

/// A byte of base64 text (the standard alphabet and its padding).
fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

fn line_too_long(buf: &[u8]) -> ShellError {
    ShellError::Protocol(format!(
        "a line from the guest's shell is longer than {MAX_LINE} bytes: {:?}...",
        String::from_utf8_lossy(&buf[..buf.len().min(80)])
    ))
}

/// An exit status as the guest printed it.
fn parse_status(text: &[u8]) -> Result<i32, ShellError> {
    let text = String::from_utf8_lossy(text);
    text.trim().parse::<i32>().map_err(|_| {
        ShellError::Protocol(format!("expected an exit status, got {:?}", text.trim()))
    })
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Where `needle` (not empty) first occurs in `hay`: its first byte is looked for, then the
/// rest compared, which scans a megabyte of output in well under a millisecond.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from + memchr(first, &hay[from..=hay.len() - needle.len()])?;
        if hay[i + 1..i + needle.len()] == *rest {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

#[cfg(test)]
mod properties;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    /// A fake guest: a local bash serving the backdoor protocol on a socket pair.
    pub fn fake_guest() -> (Shell, crate::process::ChildProcess) {
        fake_guest_on(|_| {})
    }

    /// [`fake_guest`], with `setup` applied to the host's end of the socket first.
    fn fake_guest_on(setup: impl FnOnce(&UnixStream)) -> (Shell, crate::process::ChildProcess) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        setup(&ours);
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
        let mut shell = Shell::with_framing(ours, Framing::Raw);
        let deadline = Deadline::after(Some(Duration::from_secs(10)));
        shell.wait_for_handshake(deadline, &mut || true).unwrap();
        (shell, child)
    }

    fn set_send_buffer(stream: &UnixStream, bytes: libc::c_int) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
        // SAFETY: a valid fd and an int of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }

    fn both_framings(check: impl Fn(&mut Shell)) {
        for framing in [Framing::Raw, Framing::Base64, Framing::Upstream] {
            let (mut shell, _child) = fake_guest();
            shell.framing = framing;
            check(&mut shell);
        }
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
    fn the_encoder_chunks_as_the_host_acknowledges() {
        assert!(raw_encoder(ACK_EVERY).contains(&format!(" dd bs={ACK_EVERY} count=1 ")));
        assert!(raw_encoder(1 << 20).contains(" dd bs=1048576 count=1 "));
        assert!(!raw_encoder(1 << 20).contains('@'));
    }

    #[test]
    fn find_finds_the_first_occurrence() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"ab", b"ab"), Some(0));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"xxa", b"a"), Some(2));
        assert_eq!(find(b"abab", b"b"), Some(1));
    }

    #[test]
    fn quote_matches_python_shlex() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("abc/d-e.f"), "abc/d-e.f");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    fn line(command: &str, timeout: Option<Duration>, reply: Reply, framing: Framing) -> String {
        command_line(VM_PREAMBLE, command, timeout, reply, framing).line
    }

    #[test]
    fn lines_sent_for_each_framing() {
        let upstream = command_line(VM_PREAMBLE, "true", None, Reply::Full, Framing::Upstream);
        assert_eq!(
            (upstream.line.as_str(), upstream.lines, upstream.nonce),
            (
                " bash -c 'set -euo pipefail; true' | (base64 -w 0; echo)\n",
                1,
                None
            )
        );
        assert_eq!(
            line(
                "true",
                Some(Duration::from_secs(900)),
                Reply::OutputOnly,
                Framing::Upstream
            ),
            "timeout 900 bash -c 'set -euo pipefail; true' | (base64 -w 0; echo)\n"
        );
        assert_eq!(
            line("true", None, Reply::Full, Framing::Base64),
            "( eval 'set -euo pipefail; true' ) | base64 -w 0; echo \" ${PIPESTATUS[0]}\"\n"
        );
        assert_eq!(
            line("x", Some(Duration::from_millis(1500)), Reply::Full, Framing::Base64),
            "timeout 1.500 bash -c 'set -euo pipefail; x' | base64 -w 0; echo \" ${PIPESTATUS[0]}\"\n"
        );
        let raw = command_line(VM_PREAMBLE, "true", None, Reply::Full, Framing::Raw);
        let n = raw.nonce.unwrap();
        assert_eq!(n.len(), 16);
        assert_eq!(
            raw.line,
            format!(
                "{{ ( shopt -u lastpipe; exec 3<&-; eval 'set -euo pipefail; true' ) | __ntng_out; printf '{n}E%d\\n' ${{PIPESTATUS[0]}}; }} 3<&0\n"
            )
        );
        let raw = command_line(
            VM_PREAMBLE,
            "x",
            Some(Duration::from_secs(2)),
            Reply::OutputOnly,
            Framing::Raw,
        );
        let m = raw.nonce.unwrap();
        assert_ne!(m, n, "a new marker for each command");
        assert_eq!(
            raw.line,
            format!("{{ timeout 2 bash -c 'set -euo pipefail; x' 3<&- | __ntng_out; printf '{m}E\\n'; }} 3<&0\n")
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
    fn base64_output_is_decoded_as_it_arrives() {
        for framing in [Framing::Base64, Framing::Upstream] {
            let (mut shell, _child) = fake_guest();
            shell.framing = framing;
            let (rc, out) = run(&mut shell, "head -c 20000000 /dev/zero | tr '\\0' a");
            assert_eq!((rc, out.len()), (0, 20_000_000), "{framing:?}");
            assert!(out.iter().all(|&b| b == b'a'), "{framing:?}");
            // the 27 MB of base64 text were never held: the buffer held one read at most
            assert!(
                shell.buf.capacity() <= 2 * shell.scratch.len(),
                "{framing:?}: a buffer of {} bytes",
                shell.buf.capacity()
            );
            // an abandoned base64 reply is skipped without being held either
            let r = shell.execute(
                "sleep 0.3; head -c 5000000 /dev/zero",
                None,
                Reply::Full,
                Deadline::after(Some(Duration::from_millis(100))),
            );
            assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
            assert_eq!(run(&mut shell, "echo next"), (0, b"next\n".to_vec()));
            assert!(shell.buf.capacity() <= 2 * shell.scratch.len());
        }
    }

    #[test]
    fn a_line_past_the_bound_is_a_protocol_error() {
        let mut long = "aGk= ".to_string();
        long.push_str(&"7".repeat(MAX_LINE + 1));
        long.push('\n');
        let long: &'static str = Box::leak(long.into_boxed_str());
        let line = |cmd: &str| {
            format!(
                "( eval 'set -euo pipefail; {cmd}' ) | base64 -w 0; echo \" ${{PIPESTATUS[0]}}\"\n"
            )
        };
        let (mut shell, _release, guest) = scripted_guest(vec![(line("true"), long, false)]);
        shell.framing = Framing::Base64;
        let r = shell.execute(
            "true",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_secs(30))),
        );
        assert!(
            matches!(&r, Err(ShellError::Protocol(m)) if m.contains("longer than 4096 bytes")),
            "{r:?}"
        );
        drop(shell);
        let _ = guest.join();
    }

    #[test]
    fn noise_before_the_handshake_is_not_kept() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut shell = Shell::with_framing(ours, Framing::Raw);
        let guest = std::thread::spawn(move || {
            let noise = vec![b'x'; 1 << 20];
            for _ in 0..20 {
                theirs.write_all(&noise).unwrap();
            }
            theirs.write_all(HANDSHAKE).unwrap();
            theirs.write_all(b"\n").unwrap();
            theirs
        });
        shell
            .wait_for_handshake(Deadline::after(Some(Duration::from_secs(30))), &mut || true)
            .unwrap();
        assert!(
            shell.buf.capacity() <= 2 * shell.scratch.len(),
            "{}",
            shell.buf.capacity()
        );
        drop(guest.join().unwrap());
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

    /// A command printing `n` bytes of `pattern` (one byte, shell `printf` escape) repeated.
    fn bytes_of(n: usize, pattern: &str) -> String {
        format!("head -c {n} /dev/zero | tr '\\0' '{pattern}'")
    }

    #[test]
    fn raw_output_round_trips_every_size_around_the_builtin_limit_and_nuls() {
        let (mut shell, _child) = fake_guest();
        assert_eq!(shell.framing(), Framing::Raw);
        assert_eq!(run(&mut shell, "true"), (0, Vec::new()));
        assert_eq!(run(&mut shell, "printf '\\0'"), (0, vec![0]));
        assert_eq!(
            run(&mut shell, "printf 'a\\0\\0b '; exit 3"),
            (3, b"a\0\0b ".to_vec())
        );
        // the builtins copy up to 2048 bytes or the first NUL, then `cat` the rest; the pipe
        // holds 65536, the host reads 262144 at a time
        for n in [1, 2046, 2047, 2048, 2049, 4097, 65_537, 262_145] {
            let (rc, out) = run(&mut shell, &bytes_of(n, "x"));
            assert_eq!((rc, out.len()), (0, n), "{n} bytes");
            assert!(out.iter().all(|&b| b == b'x'), "{n} bytes");
            let (rc, out) = run(&mut shell, &format!("head -c {n} /dev/zero"));
            assert_eq!((rc, out.len()), (0, n), "{n} NULs");
            assert!(out.iter().all(|&b| b == 0), "{n} NULs");
            // a NUL right at the limit, and text after it
            let cmd = format!("{}; printf '\\0\\377tail'", bytes_of(n, "y"));
            let (rc, out) = run(&mut shell, &cmd);
            assert_eq!(rc, 0);
            assert_eq!(out.len(), n + 6, "{n} bytes, a NUL, more");
            assert_eq!(&out[n..], b"\0\xfftail");
        }
        // every byte value, and invalid UTF-8
        let (rc, out) = run(
            &mut shell,
            "for i in $(seq 0 255); do printf \"\\\\$(printf %o $i)\"; done",
        );
        assert_eq!((rc, out), (0, (0u8..=255).collect::<Vec<u8>>()));
    }

    /// A fake guest whose shell paces its bulk output as on a console.
    fn paced_guest() -> (Shell, crate::process::ChildProcess) {
        let (mut shell, child) = fake_guest();
        shell.send_raw(b"__ntng_pace=1\n").unwrap();
        (shell, child)
    }

    #[test]
    fn paced_raw_output_round_trips_every_size_around_the_chunks() {
        let (mut shell, _child) = paced_guest();
        let k = ACK_EVERY;
        for n in [2049, k - 1, k, k + 1, 2048 + k, 2049 + k, 3 * k + 7] {
            let (rc, out) = run(&mut shell, &bytes_of(n, "x"));
            assert_eq!((rc, out.len()), (0, n), "{n} bytes");
            assert!(out.iter().all(|&b| b == b'x'), "{n} bytes");
            // NULs where a chunk ends and the next byte is looked for
            let (rc, out) = run(&mut shell, &format!("head -c {n} /dev/zero; echo end"));
            assert_eq!((rc, out.len()), (0, n + 4), "{n} NULs");
            assert!(out[..n].iter().all(|&b| b == 0) && out.ends_with(b"end\n"));
        }
        // the acknowledgements the guest did not wait for are empty lines to its shell
        assert_eq!(run(&mut shell, "echo after"), (0, b"after\n".to_vec()));
    }

    #[test]
    fn a_command_in_the_shell_itself_gives_its_status_and_output() {
        let (mut shell, _child) = fake_guest();
        let (rc, out) = shell
            .execute_in_shell(
                "ntng_x=1; echo hello; false",
                Deadline::after(Some(Duration::from_secs(30))),
            )
            .unwrap();
        assert_eq!((rc, out), (1, b"hello\n".to_vec()));
        // it ran in the shell itself: its variable is there for the next command
        let (rc, out) = shell
            .execute_in_shell(
                "echo $ntng_x; unset ntng_x",
                Deadline::after(Some(Duration::from_secs(30))),
            )
            .unwrap();
        assert_eq!((rc, out), (0, b"1\n".to_vec()));
        assert_eq!(run(&mut shell, "echo after"), (0, b"after\n".to_vec()));
    }

    #[test]
    fn paced_raw_output_round_trips_with_a_larger_chunk() {
        let (shell, _child) = paced_guest();
        let mut shell = shell.with_pace_chunk(1 << 20);
        for n in [2049, (1 << 20) + 1, 2048 + (1 << 20), 3 << 20] {
            let (rc, out) = run(&mut shell, &format!("head -c {n} /dev/zero; echo end"));
            assert_eq!((rc, out.len()), (0, n + 4), "{n} NULs");
        }
        // 3 MiB and its 2 KiB head: two acknowledgements, not a hundred
        assert_eq!(shell.acks_sent, 3);
        assert_eq!(run(&mut shell, "echo after"), (0, b"after\n".to_vec()));
    }

    #[test]
    fn a_guest_that_does_not_pace_gets_no_pile_of_acknowledgements() {
        // Unpaced (no console), a 20 MB reply earned 610 acknowledgements; each one a buffer
        // in the guest's socket that nobody reads until the command ends, they filled it and
        // the host's write blocked while the guest blocked on its reply (a hang, seen 1 in 15
        // with 100 MB).
        // A small send buffer makes the pile-up block after a few acknowledgements.
        let (mut shell, _child) = fake_guest_on(|s| set_send_buffer(s, 4096));
        let (rc, out) = run(&mut shell, "head -c 20000000 /dev/zero");
        assert_eq!((rc, out.len()), (0, 20_000_000));
        assert!(shell.unpaced, "{} acknowledgements", shell.acks_sent);
        assert_eq!(run(&mut shell, "echo after"), (0, b"after\n".to_vec()));
        // a pacing guest is still acknowledged chunk by chunk
        shell.send_raw(b"__ntng_pace=1\n").unwrap();
        let (rc, out) = run(&mut shell, "head -c 2000000 /dev/zero");
        assert_eq!((rc, out.len()), (0, 2_000_000));
        assert_eq!(shell.acks_sent, 2_000_000 / ACK_EVERY);
    }

    #[test]
    fn paced_output_falls_back_to_cat_without_a_full_block_dd() {
        let (mut shell, _child) = paced_guest();
        // a `dd` that rejects `iflag=fullblock`, as an old one would
        shell
            .send_raw(b"dd() { echo 'dd: invalid input flag' >&2; return 1; }\n")
            .unwrap();
        let (rc, out) = run(&mut shell, &bytes_of(300_000, "q"));
        assert_eq!((rc, out.len()), (0, 300_000));
        assert!(out.iter().all(|&b| b == b'q'));
    }

    #[test]
    fn paced_raw_output_of_an_abandoned_command_is_acknowledged_by_the_next() {
        let (mut shell, _child) = paced_guest();
        // the guest waits for acknowledgements nobody sends while nobody reads
        let r = shell.execute(
            "sleep 0.3; head -c 300000 /dev/zero | tr '\\0' z",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_millis(100))),
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
        let r = shell.execute(
            "head -c 200000 /dev/zero",
            None,
            Reply::Nothing,
            Deadline::NEVER,
        );
        assert_eq!(r.unwrap(), (-2, Vec::new()));
        assert_eq!(run(&mut shell, "echo mine"), (0, b"mine\n".to_vec()));
    }

    #[test]
    fn the_command_gets_the_same_file_descriptors_as_in_a_pipeline() {
        let (mut shell, _child) = fake_guest();
        let fds = "ls /proc/self/fd/ | sort -n | tr '\\n' ' '";
        let raw = run(&mut shell, fds);
        shell.framing = Framing::Base64;
        let piped = run(&mut shell, fds);
        assert_eq!(raw, piped);
    }

    #[test]
    fn raw_output_that_looks_like_the_markers_is_output() {
        let (mut shell, _child) = fake_guest();
        // the marker of an earlier command, printed by a later one, is just output
        let old = command_line(VM_PREAMBLE, "true", None, Reply::Full, Framing::Raw)
            .nonce
            .unwrap();
        let fake = format!("{old}E0\n{old}S__ntng_out\nE1\n");
        let (rc, out) = run(&mut shell, &format!("printf %s {}", shell_quote(&fake)));
        assert_eq!((rc, out), (0, fake.into_bytes()));
        // a command may not redefine how its own output is framed: it runs in a child
        let (rc, out) = run(&mut shell, "__ntng_out() { echo hijacked; }; echo mine");
        assert_eq!((rc, out), (0, b"mine\n".to_vec()));
        // nor does it run with the shell's `lastpipe`
        let (rc, out) = run(&mut shell, "echo x | read v; echo ${v-unset}");
        assert_eq!((rc, out), (0, b"unset\n".to_vec()));
        assert_eq!(run(&mut shell, "echo next"), (0, b"next\n".to_vec()));
    }

    #[test]
    fn raw_output_only_nothing_and_abandoned_commands() {
        let (mut shell, _child) = fake_guest();
        let r = shell.execute("echo bye; exit 5", None, Reply::OutputOnly, Deadline::NEVER);
        assert_eq!(r.unwrap(), (-1, b"bye\n".to_vec()));
        let r = shell.execute(
            "sleep 0.5; echo late",
            None,
            Reply::Full,
            Deadline::after(Some(Duration::from_millis(100))),
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
        assert_eq!(run(&mut shell, "echo mine"), (0, b"mine\n".to_vec()));
        let r = shell.execute(
            "echo ignored; exit 7",
            None,
            Reply::Nothing,
            Deadline::NEVER,
        );
        assert_eq!(r.unwrap(), (-2, Vec::new()));
        assert_eq!(run(&mut shell, "echo next"), (0, b"next\n".to_vec()));
        // two abandoned in a row, one of them printing more than the host reads at once
        let short = Deadline::after(Some(Duration::from_millis(100)));
        let r = shell.execute(
            "sleep 0.3; head -c 600000 /dev/zero",
            None,
            Reply::Full,
            short,
        );
        assert!(matches!(r, Err(ShellError::TimedOut)), "{r:?}");
        shell
            .execute("echo x", None, Reply::Nothing, Deadline::NEVER)
            .unwrap();
        assert_eq!(run(&mut shell, "echo third"), (0, b"third\n".to_vec()));
    }

    #[test]
    fn raw_encoder_is_sent_once_and_again_after_a_resync() {
        let (mut shell, _child) = fake_guest();
        assert_eq!(run(&mut shell, "echo a"), (0, b"a\n".to_vec()));
        assert!(shell.encoder_sent);
        // the guest's shell loses it (as a restored snapshot taken before it was sent would)
        run(&mut shell, "true");
        shell.send_raw(b"unset -f __ntng_out\n").unwrap();
        shell
            .resync(Deadline::after(Some(Duration::from_secs(10))))
            .unwrap();
        assert!(!shell.encoder_sent);
        assert_eq!(run(&mut shell, "echo b"), (0, b"b\n".to_vec()));
        assert_eq!(
            run(&mut shell, "type -t __ntng_out"),
            (0, b"function\n".to_vec())
        );
    }

    #[test]
    fn raw_reply_with_a_bad_status_is_a_protocol_error() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut shell = Shell::with_framing(ours, Framing::Raw);
        let guest = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\n") {
                theirs.read_exact(&mut byte).unwrap();
                got.push(byte[0]);
            }
            let line = String::from_utf8(got).unwrap();
            let nonce = line.rsplit("printf '").next().unwrap()[..16].to_string();
            theirs
                .write_all(format!("out{nonce}Egarbage\n").as_bytes())
                .unwrap();
            theirs
        });
        let r = shell.execute("true", None, Reply::Full, Deadline::NEVER);
        assert!(
            matches!(&r, Err(ShellError::Protocol(m)) if m.contains("garbage")),
            "{r:?}"
        );
        drop(guest.join().unwrap());
    }
}
