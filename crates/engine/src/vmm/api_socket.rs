//! Waiting for a VMM's API socket: bounded, and failing at once when the VMM exits first.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use crate::interrupt::{self, Deadline};
use crate::process::ChildProcess;

/// How often the socket is looked for.
const POLL: Duration = Duration::from_millis(5);

/// Why the socket did not come.
#[derive(Debug, thiserror::Error)]
pub enum SocketWaitError {
    /// The VMM's process ended before it served the socket.
    #[error("it exited ({0}) before serving its API socket")]
    Exited(ExitStatus),
    /// The socket did not accept a connection in time.
    #[error("its API socket {} did not appear within {:.0} s", path.display(), timeout.as_secs_f64())]
    TimedOut {
        path: std::path::PathBuf,
        timeout: Duration,
    },
    /// SIGINT, SIGTERM or the global timeout.
    #[error("interrupted")]
    Interrupted,
}

/// Waits until `path` accepts a connection, `process` exits, or `timeout` passes.
pub fn wait_for_socket(
    path: &Path,
    process: &ChildProcess,
    timeout: Duration,
) -> Result<(), SocketWaitError> {
    let deadline = Deadline::after(Some(timeout));
    loop {
        if UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if let Some(status) = process.exit_status() {
            return Err(SocketWaitError::Exited(status));
        }
        if interrupt::check().is_err() {
            return Err(SocketWaitError::Interrupted);
        }
        if deadline.expired() {
            return Err(SocketWaitError::TimedOut {
                path: path.to_path_buf(),
                timeout,
            });
        }
        std::thread::sleep(POLL.min(deadline.slice()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process;
    use crate::vmm::test_dir::TestDir;
    use std::process::{Command, Stdio};

    fn sh(script: &str) -> ChildProcess {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdin(Stdio::null());
        process::spawn(cmd).unwrap()
    }

    #[test]
    fn a_socket_that_appears() {
        let dir = TestDir::new();
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let p = sh("sleep 300");
        wait_for_socket(&path, &p, Duration::from_secs(5)).unwrap();
        p.kill();
        drop(listener);
    }

    #[test]
    fn the_process_exiting_first_ends_the_wait() {
        let dir = TestDir::new();
        let p = sh("exit 4");
        let e = wait_for_socket(&dir.path().join("api.sock"), &p, Duration::from_secs(300))
            .unwrap_err();
        assert!(
            matches!(e, SocketWaitError::Exited(s) if s.code() == Some(4)),
            "{e:?}"
        );
    }

    #[test]
    fn a_socket_that_never_appears_times_out() {
        let dir = TestDir::new();
        let path = dir.path().join("api.sock");
        // A file that is no socket does not count.
        std::fs::write(&path, "").unwrap();
        let p = sh("sleep 300");
        let e = wait_for_socket(&path, &p, Duration::from_millis(50)).unwrap_err();
        p.kill();
        assert!(matches!(e, SocketWaitError::TimedOut { .. }), "{e:?}");
        assert!(e.to_string().contains("did not appear within 0 s"), "{e}");
    }
}
