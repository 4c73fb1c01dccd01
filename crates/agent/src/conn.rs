//! One connection: HELLO, then one request at a time until the host goes away or breaks the
//! protocol.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use agent_protocol::{
    encode_json, write_frame, Failure, Frame, FrameDecoder, FrameError, Hello, Kind, Pong,
    AGENT_NAME, PROTOCOL_VERSION,
};

use crate::warm::WarmShell;
use crate::{exec, log, sys, tree, warm};

/// Why a connection ends.
#[derive(Debug)]
pub enum End {
    /// The host closed it between requests.
    Closed,
    /// The stream broke or the host broke the protocol: the connection is dropped.
    Broken(String),
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> End {
        match e {
            FrameError::Closed => End::Closed,
            other => End::Broken(other.to_string()),
        }
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Broken(format!("i/o: {e}"))
    }
}

/// The connection's stream with its incoming frame parser.
pub struct Conn {
    stream: File,
    decoder: FrameDecoder,
    /// Set once the host closed its side: no more frames will come.
    eof: bool,
    buf: Vec<u8>,
    warm: Warm,
}

/// The connection's warm shell (see `warm`), started at the first command.
enum Warm {
    NotStarted,
    Idle(WarmShell),
    /// Switched off (`--no-warm-shell`), or it cannot start here: commands use `bash -c`.
    Off,
}

const READ_CHUNK: usize = 64 * 1024;

impl Conn {
    pub fn new(fd: OwnedFd) -> Conn {
        Conn {
            stream: File::from(fd),
            decoder: FrameDecoder::new(),
            eof: false,
            buf: vec![0u8; READ_CHUNK],
            warm: if warm::enabled() {
                Warm::NotStarted
            } else {
                Warm::Off
            },
        }
    }

    /// The warm shell for one command (started if need be); `put_warm_shell` gives it back.
    /// None when it is off: the command runs with its own `bash -c`.
    pub fn take_warm_shell(&mut self) -> Option<WarmShell> {
        match std::mem::replace(&mut self.warm, Warm::NotStarted) {
            Warm::Idle(shell) => Some(shell),
            Warm::Off => {
                self.warm = Warm::Off;
                None
            }
            Warm::NotStarted => match WarmShell::start() {
                Ok(shell) => Some(shell),
                Err(why) => {
                    self.warm_shell_failed(&why.0);
                    None
                }
            },
        }
    }

    pub fn put_warm_shell(&mut self, shell: WarmShell) {
        self.warm = Warm::Idle(shell);
    }

    /// The warm shell could not take a command: this connection's commands use `bash -c`.
    pub fn warm_shell_failed(&mut self, why: &str) {
        log::line(format_args!(
            "the warm shell cannot run commands ({why}): each command runs its own bash -c"
        ));
        self.warm = Warm::Off;
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn send(&mut self, kind: Kind, body: &[u8]) -> Result<(), End> {
        write_frame(&mut self.stream, kind, body)?;
        Ok(())
    }

    /// Sends a frame made by [`encode_json`] (the agent names no serde trait itself).
    pub fn send_encoded(&mut self, wire: Result<Vec<u8>, FrameError>) -> Result<(), End> {
        self.stream.write_all(&wire?)?;
        Ok(())
    }

    pub fn send_error(&mut self, message: impl Into<String>) -> Result<(), End> {
        self.send_encoded(encode_json(
            Kind::Error,
            &Failure {
                message: message.into(),
            },
        ))
    }

    /// A frame already buffered, if any (never reads).
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, End> {
        Ok(self.decoder.next_frame()?)
    }

    /// One read(2) from the stream into the parser (call when poll says readable). Returns
    /// false at EOF.
    pub fn fill_once(&mut self) -> Result<bool, End> {
        let fd = self.fd();
        let n = sys::read(fd, &mut self.buf)?;
        if n == 0 {
            self.eof = true;
            self.decoder.finish()?;
            return Ok(false);
        }
        self.decoder.push(&self.buf[..n]);
        Ok(true)
    }

    /// The next frame, blocking.
    pub fn recv(&mut self) -> Result<Frame, End> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            if self.eof || !self.fill_once()? {
                return Err(End::Closed);
            }
        }
    }
}

/// Serves one connection until it ends; logs why, unless the host simply closed it (the log
/// may be the guest's console: one line per connection would crowd it).
pub fn serve(fd: OwnedFd, peer: &str) {
    let mut conn = Conn::new(fd);
    if let Err(End::Broken(why)) = serve_requests(&mut conn) {
        log::line(format_args!("{peer}: dropped: {why}"));
    }
}

fn serve_requests(conn: &mut Conn) -> Result<(), End> {
    // Returns only by an error: End::Closed when the host is done.
    conn.send_encoded(encode_json(
        Kind::Hello,
        &Hello {
            agent: AGENT_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned()),
        },
    ))?;
    loop {
        let frame = conn.recv()?;
        match frame.kind {
            Kind::Exec => exec::run(conn, frame.json()?)?,
            Kind::Put => tree::put::receive(conn, frame.json()?)?,
            Kind::Get => tree::get::send(conn, frame.json()?)?,
            Kind::Ping => conn.send_encoded(encode_json(
                Kind::Pong,
                &Pong {
                    realtime_ns: sys::clock_ns(libc::CLOCK_REALTIME),
                    monotonic_ns: sys::clock_ns(libc::CLOCK_MONOTONIC),
                },
            ))?,
            // Late input or a late signal for a command that already ended.
            Kind::Stdin | Kind::Signal => {}
            other => {
                return Err(End::Broken(format!(
                    "unexpected {other} frame between requests"
                )))
            }
        }
    }
}
