//! The HMP text monitor on the `monitor` socket: send a line, read until the `(qemu) ` prompt.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};

/// The monitor's prompt.
pub const PROMPT: &[u8] = b"(qemu) ";

/// The longest answer read up to a prompt, in bytes; a longer one fails with an error naming
/// the machine instead of growing without bound.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// A connected HMP monitor.
pub struct Monitor {
    stream: UnixStream,
    /// The machine, for errors.
    machine: String,
}

impl Monitor {
    /// Wraps an accepted connection to `machine`'s monitor.
    pub fn new(stream: UnixStream, machine: &str) -> Self {
        Monitor {
            stream,
            machine: machine.to_string(),
        }
    }

    fn error(&self, e: std::io::Error) -> Error {
        Error::io(format!("{}: monitor", self.machine), e)
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
                return Err(self.error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no prompt from the QEMU monitor",
                )));
            }
            if buf.len() > MAX_ANSWER {
                return Err(self.error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the QEMU monitor sent more than {MAX_ANSWER} bytes without a prompt"),
                )));
            }
            self.stream
                .set_read_timeout(Some(deadline.slice()))
                .map_err(|e| self.error(e))?;
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
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends `command` and returns the answer up to the next prompt (echo included, as upstream).
    pub fn send(&mut self, command: &str, deadline: Deadline) -> Result<String> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| self.error(e))?;
        self.wait_for_prompt(deadline)
    }
}

#[cfg(test)]
mod properties;
