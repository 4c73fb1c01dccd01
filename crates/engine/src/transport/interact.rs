//! Interactive commands on a backdoor shell (`shell_interact`): the output streams as it
//! comes, and Ctrl-C on the host interrupts the command in the guest instead of the driver.
//!
//! The command runs as a background job with a process group of its own (`set -m`), its
//! stdin from /dev/null; beside it a reader on the shell's stdin waits for `INT` (sent by the
//! host on Ctrl-C: the job's group gets SIGINT) or `END` (the host has seen the end marker).
//! The shell then prints a second marker, after which its stdin is its own again.

use std::sync::atomic::{AtomicU64, Ordering};

use super::shell::{find, shell_quote, Shell, ShellError};
use crate::interrupt::{self, Deadline, Reason};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The line sent for one interactive command, and its two markers.
fn interact_line(command: &str, token: &str) -> String {
    format!(
        "set -m; ( shopt -u lastpipe; eval {cmd} ) </dev/null 2>&1 & __ntng_p=$!; set +m; \
         ( while read -r __ntng_c; do case $__ntng_c in \
         INT) kill -INT -- -$__ntng_p 2>/dev/null ;; END) exit 0 ;; esac; done ) <&0 & \
         __ntng_w=$!; wait $__ntng_p; __ntng_s=$?; printf '\\nntng-done-{token} %d\\n' $__ntng_s; \
         wait $__ntng_w; echo ntng-ready-{token}\n",
        cmd = shell_quote(command)
    )
}

impl Shell {
    /// Runs `command` interactively: its output (stdout and stderr) goes to `out` as it
    /// arrives; SIGINT on the host (the interrupt flag) is cleared and forwarded to the
    /// command. Returns its exit status. SIGTERM and the global timeout still end the wait.
    pub fn interact(
        &mut self,
        command: &str,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<i32, ShellError> {
        let token = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let done = format!("\nntng-done-{token} ");
        let ready = format!("ntng-ready-{token}\n");
        // what an earlier command still owes first: its shell may wait for acknowledgements
        self.settle(Deadline::NEVER)?;
        self.send_raw(interact_line(command, &token).as_bytes())?;
        let status = loop {
            if let Some(i) = find(self.buffer(), done.as_bytes()) {
                if let Some(end) = self.buffer()[i + done.len()..]
                    .iter()
                    .position(|&b| b == b'\n')
                {
                    out(&self.buffer()[..i]);
                    let text = String::from_utf8_lossy(&self.buffer()[i + done.len()..][..end])
                        .trim()
                        .to_string();
                    self.consume(i + done.len() + end + 1);
                    break text.parse::<i32>().map_err(|_| {
                        ShellError::Protocol(format!(
                            "bad status after an interactive command: {text:?}"
                        ))
                    })?;
                }
            } else {
                // Everything but a possible start of the marker can be shown now.
                let keep = partial_suffix(self.buffer(), done.as_bytes());
                let shown = self.buffer().len() - keep;
                if shown > 0 {
                    out(&self.buffer()[..shown]);
                    self.consume(shown);
                }
            }
            match interrupt::pending() {
                Some(Reason::Interrupt) => {
                    interrupt::clear();
                    self.send_raw(b"INT\n")?;
                }
                Some(_) => return Err(ShellError::Interrupted),
                None => {}
            }
            match self.fill_quietly(Deadline::NEVER) {
                Ok(_) => {}
                Err(ShellError::Interrupted) => {}
                Err(e) => return Err(e),
            }
        };
        self.send_raw(b"END\n")?;
        loop {
            if let Some(i) = find(self.buffer(), ready.as_bytes()) {
                self.consume(i + ready.len());
                return Ok(status);
            }
            match self.fill_quietly(Deadline::NEVER) {
                Ok(_) | Err(ShellError::Interrupted) => {}
                Err(e) => return Err(e),
            }
            if let Some(Reason::Terminate | Reason::GlobalTimeout) = interrupt::pending() {
                return Err(ShellError::Interrupted);
            }
        }
    }
}

/// The length of the longest suffix of `buf` that is a proper prefix of `marker`.
fn partial_suffix(buf: &[u8], marker: &[u8]) -> usize {
    (1..marker.len().min(buf.len() + 1))
        .rev()
        .find(|&n| buf.ends_with(&marker[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::shell::tests::fake_guest;
    use std::time::Duration;

    #[test]
    fn partial_markers_are_held_back() {
        assert_eq!(partial_suffix(b"abc\nntng", b"\nntng-done-1 "), 5);
        assert_eq!(partial_suffix(b"abc", b"\nntng-done-1 "), 0);
        assert_eq!(partial_suffix(b"", b"\nx"), 0);
    }

    #[test]
    fn output_streams_and_status_comes_back_and_the_shell_stays_usable() {
        let (mut shell, _child) = fake_guest();
        let mut seen = Vec::new();
        let status = shell
            .interact("echo one; echo two >&2; exit 3", &mut |b| {
                seen.extend_from_slice(b)
            })
            .unwrap();
        assert_eq!(status, 3);
        assert_eq!(seen, b"one\ntwo\n");
        let (rc, out) = shell
            .execute(
                "echo after",
                None,
                super::super::shell::Reply::Full,
                Deadline::after(Some(Duration::from_secs(10))),
            )
            .unwrap();
        assert_eq!((rc, out), (0, b"after\n".to_vec()));
        // the raw framing's `lastpipe`, now on in the shell, is off for the command
        let mut seen = Vec::new();
        let status = shell
            .interact("echo x | read v; echo ${v-unset}", &mut |b| {
                seen.extend_from_slice(b)
            })
            .unwrap();
        assert_eq!((status, seen), (0, b"unset\n".to_vec()));
    }

    #[test]
    fn an_unread_paced_reply_is_read_before_an_interactive_command() {
        let (mut shell, _child) = fake_guest();
        shell.send_raw(b"__ntng_pace=1\n").unwrap();
        let r = shell.execute(
            "head -c 400000 /dev/zero",
            None,
            super::super::shell::Reply::Nothing,
            Deadline::NEVER,
        );
        assert_eq!(r.unwrap().0, -2);
        let mut seen = Vec::new();
        let status = shell.interact("echo mine", &mut |b| seen.extend_from_slice(b));
        assert_eq!((status.unwrap(), seen), (0, b"mine\n".to_vec()));
    }
}
