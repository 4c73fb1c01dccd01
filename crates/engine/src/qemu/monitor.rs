//! The HMP text monitor on the `monitor` socket: send a line, read until the `(qemu) ` prompt.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};

/// The monitor's prompt.
pub const PROMPT: &[u8] = b"(qemu) ";

/// A connected HMP monitor.
pub struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    /// Wraps an accepted connection.
    pub fn new(stream: UnixStream) -> Self {
        Monitor { stream }
    }

    /// Reads until the prompt (or end of file); returns everything read.
    pub fn wait_for_prompt(&mut self, deadline: Deadline) -> Result<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            interrupt::check()?;
            if buf.ends_with(PROMPT) {
                break;
            }
            if deadline.expired() {
                return Err(Error::io(
                    "monitor",
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no prompt from the QEMU monitor",
                    ),
                ));
            }
            self.stream
                .set_read_timeout(Some(deadline.slice()))
                .map_err(|e| Error::io("monitor", e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(Error::io("monitor", e)),
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends `command` and returns the answer up to the next prompt (echo included, as upstream).
    pub fn send(&mut self, command: &str, deadline: Deadline) -> Result<String> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| Error::io("monitor", e))?;
        self.wait_for_prompt(deadline)
    }
}

#[cfg(test)]
mod properties;
