//! Child processes that die with the driver.
//!
//! Every child gets its own process group (so the whole tree can be killed, whatever the
//! start script does) and a parent-death signal. Linux sends that signal when the *thread*
//! that forked the child exits, so all children are forked by one long-lived spawner thread.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Sender};

use crate::interrupt::Deadline;

type SpawnRequest = (Command, Sender<io::Result<Child>>);

fn spawner() -> &'static Sender<SpawnRequest> {
    static SPAWNER: OnceLock<Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = unbounded::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ntng-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        tx
    })
}

/// Spawns `cmd` in a new process group with a parent-death SIGKILL.
pub fn spawn(mut cmd: Command) -> io::Result<ChildProcess> {
    // SAFETY: getpid is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls happen between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = bounded(1);
    spawner()
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    let mut child = rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))??;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let process = ChildProcess::adopt(&mut child, stdin);
    *process.stdout.lock().unwrap() = stdout;
    *process.stderr.lock().unwrap() = stderr;
    Ok(process.with_waiter(child))
}

#[derive(Default)]
struct ExitCell {
    status: Mutex<Option<ExitStatus>>,
    changed: Condvar,
}

/// A running child: its pid, its exit status once reaped, and its stdin.
pub struct ChildProcess {
    pid: u32,
    exit: Arc<ExitCell>,
    stdin: Mutex<Option<ChildStdin>>,
    stdout: Mutex<Option<ChildStdout>>,
    stderr: Mutex<Option<ChildStderr>>,
}

impl ChildProcess {
    /// Takes the child's stderr (when it was piped).
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.stderr.lock().unwrap().take()
    }

    /// Takes the child's stdout (when it was piped).
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.stdout.lock().unwrap().take()
    }

    fn adopt(child: &mut Child, stdin: Option<ChildStdin>) -> Self {
        ChildProcess {
            pid: child.id(),
            exit: Arc::default(),
            stdin: Mutex::new(stdin),
            stdout: Mutex::new(None),
            stderr: Mutex::new(None),
        }
    }

    fn with_waiter(self, mut child: Child) -> Self {
        let exit = self.exit.clone();
        std::thread::Builder::new()
            .name(format!("ntng-wait-{}", self.pid))
            .spawn(move || {
                let status = child.wait().ok();
                *exit.status.lock().unwrap() = status;
                exit.changed.notify_all();
            })
            .expect("cannot start a waiter thread");
        self
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.status.lock().unwrap()
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits for the exit until `deadline`; `None` when it passed or the run was interrupted.
    pub fn wait(&self, deadline: Deadline) -> Option<ExitStatus> {
        let mut status = self.exit.status.lock().unwrap();
        loop {
            if let Some(s) = *status {
                return Some(s);
            }
            if deadline.expired() || crate::interrupt::pending().is_some() {
                return None;
            }
            status = self
                .exit
                .changed
                .wait_timeout(status, deadline.slice())
                .unwrap()
                .0;
        }
    }

    /// [`ChildProcess::wait`] telling the two ways it ends without an exit apart:
    /// `Ok(None)` when `deadline` passed, `Err(Interrupted)` when the run was interrupted.
    pub fn wait_until(&self, deadline: Deadline) -> crate::error::Result<Option<ExitStatus>> {
        match self.wait(deadline) {
            Some(status) => Ok(Some(status)),
            None => crate::interrupt::check().map(|()| None),
        }
    }

    /// Blocks until the process has exited, whatever else happens (an interrupt of the run
    /// does not end this wait): for watchers that only report the end.
    pub fn wait_exit(&self) -> ExitStatus {
        let mut status = self.exit.status.lock().unwrap();
        loop {
            if let Some(s) = *status {
                return s;
            }
            status = self.exit.changed.wait(status).unwrap();
        }
    }

    /// The exit status as one number once exited: the exit code, or minus the signal that
    /// killed it (the convention of Python's `Popen.returncode`).
    pub fn returncode(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.exit_status()
            .map(|s| s.code().unwrap_or_else(|| -s.signal().unwrap_or(0)))
    }

    /// Writes to the child's stdin.
    pub fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        match self.stdin.lock().unwrap().as_mut() {
            Some(stdin) => {
                stdin.write_all(data)?;
                stdin.flush()
            }
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed")),
        }
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap().take();
    }

    /// Sends `signal` to the whole process group.
    pub fn signal_group(&self, signal: i32) {
        // SAFETY: plain syscall; a stale group id is harmless (ESRCH).
        unsafe {
            libc::killpg(self.pid as libc::pid_t, signal);
        }
    }

    /// Asks the whole process group to end (SIGTERM).
    pub fn terminate(&self) {
        self.signal_group(libc::SIGTERM);
    }

    /// Kills the whole process group and reaps the leader (bounded wait).
    pub fn kill(&self) {
        self.signal_group(libc::SIGKILL);
        let mut status = self.exit.status.lock().unwrap();
        let limit = std::time::Instant::now() + Duration::from_secs(5);
        while status.is_none() && std::time::Instant::now() < limit {
            status = self
                .exit
                .changed
                .wait_timeout(status, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal_group(libc::SIGKILL);
        } else {
            // The leader is gone; members of its group (if any) must go too.
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// How a process ended, for errors and the log: `exited with status 3`, `killed by signal 15
/// (SIGTERM)`; a SIGKILL nobody in the driver sent is most often the kernel's OOM killer, so
/// that one says so.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(libc::SIGKILL)) => {
            "killed by signal 9 (SIGKILL), e.g. the OOM killer".to_string()
        }
        (None, Some(sig)) => match signal_name(sig) {
            Some(name) => format!("killed by signal {sig} ({name})"),
            None => format!("killed by signal {sig}"),
        },
        (None, None) => format!("ended ({status})"),
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn alive(pid: &str) -> bool {
        // A killed process may linger as a zombie until init reaps it; that counts as dead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => false,
        }
    }

    #[test]
    fn describe_exit_names_the_code_or_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9 (SIGKILL), e.g. the OOM killer"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGTERM)),
            "killed by signal 15 (SIGTERM)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(60)),
            "killed by signal 60"
        );
    }

    #[test]
    fn returncode_is_the_code_or_minus_the_signal() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]).stdin(Stdio::null());
        let done = spawn(cmd).unwrap();
        assert_eq!(
            done.wait_until(Deadline::NEVER).unwrap().map(|s| s.code()),
            Some(Some(3))
        );
        assert_eq!(done.returncode(), Some(3));

        let mut cmd = Command::new("sleep");
        cmd.arg("300").stdin(Stdio::null());
        let sleeper = spawn(cmd).unwrap();
        let soon = Deadline::after(Some(Duration::from_millis(20)));
        assert!(sleeper.wait_until(soon).unwrap().is_none());
        assert_eq!(sleeper.returncode(), None);
        sleeper.kill();
        assert_eq!(sleeper.returncode(), Some(-libc::SIGKILL));
    }

    #[test]
    fn kill_reaches_the_whole_group() {
        use std::io::BufRead;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 300 & echo $!; wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let child = spawn(cmd).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.take_stdout().unwrap())
            .read_line(&mut line)
            .unwrap();
        let grandchild = line.trim().to_string();
        assert!(alive(&grandchild));
        child.kill();
        assert!(child.exit_status().is_some());
        // SIGKILL is delivered asynchronously: wait for the grandchild to go
        let patience = Deadline::after(Some(Duration::from_secs(30)));
        while alive(&grandchild) && !patience.expired() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!alive(&grandchild), "a member of the group survived");
    }

    #[test]
    fn wait_returns_the_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let child = spawn(cmd).unwrap();
        let status = child
            .wait(Deadline::after(Some(Duration::from_secs(5))))
            .unwrap();
        assert_eq!(status.code(), Some(3));
    }
}
