//! The warm shell: one long-lived bash per connection that forks the subshell for the next
//! command before the command arrives. A command then costs neither an exec of bash (about
//! 8 ms under TCG) nor a fork (about 2 ms) on its path: the agent writes it to a subshell
//! that is already waiting for it. Commands run as upstream's backdoor runs them, as a
//! subshell of a running bash: `$$` is that bash's pid, `$BASHPID` the command's.
//!
//! The protocol with the shell (`warm.sh`): the agent writes "OUT ERR GO\n", three of its own
//! fd numbers; the shell forks a subshell that opens them through `/proc/<agent>/fd/`, says
//! "O <pid>" (the subshell is its own process group), reads its command from GO until EOF and
//! evals it; when it has ended the shell says "X <pid> <status>". One subshell at a time.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

const SCRIPT: &str = include_str!("warm.sh");

static ENABLED: AtomicBool = AtomicBool::new(true);

/// `--no-warm-shell` switches it off: every command runs its own `bash -c`.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How long the shell may take to fork a subshell before the command falls back to its own
/// `bash -c`. A guard against a wedged shell, far above a fork under load.
const FORK_GUARD: Duration = Duration::from_secs(30);

/// Why the warm shell cannot take a command; the caller runs it with `bash -c` instead.
#[derive(Debug)]
pub struct Broken(pub String);

impl From<io::Error> for Broken {
    fn from(e: io::Error) -> Broken {
        Broken(format!("i/o: {e}"))
    }
}

/// A subshell the shell was asked for, before it said it holds its fds.
struct Asked {
    stdout: OwnedFd,
    stderr: OwnedFd,
    go: OwnedFd,
    /// The subshell's ends, kept open until it has opened them through /proc.
    ends: [OwnedFd; 3],
}

/// A running command's subshell: its pipes and its process group.
pub struct Worker {
    pub pid: libc::pid_t,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

pub struct WarmShell {
    shell: Child,
    /// To poll for the shell's end besides EOF on its pipe.
    shell_pidfd: Option<OwnedFd>,
    control: ChildStdin,
    report: OwnedFd,
    lines: Vec<u8>,
    next: Option<Asked>,
    /// The last subshell that said "O": its "X" may still be unread when the next is asked.
    last: Option<libc::pid_t>,
}

impl WarmShell {
    /// Starts the shell (in its own session) and asks it for the first subshell.
    pub fn start() -> Result<WarmShell, Broken> {
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "--noprofile", "-c", SCRIPT, "bash"])
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let agent = std::process::id() as libc::pid_t;
        // SAFETY: reset_signals, setsid, prctl and getppid are async-signal-safe; nothing
        // else is touched. The shell is in its own session, out of reach of signals to the
        // agent's group: it is killed with its connection's thread (or the agent) instead.
        unsafe {
            cmd.pre_exec(move || {
                sys::reset_signals();
                sys::cvt(libc::setsid())?;
                sys::cvt(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                if libc::getppid() != agent {
                    return Err(io::Error::other("the agent ended"));
                }
                Ok(())
            });
        }
        let mut shell = cmd
            .spawn()
            .map_err(|e| Broken(format!("cannot start bash: {e}")))?;
        let control = shell.stdin.take().expect("piped");
        let report = OwnedFd::from(shell.stdout.take().expect("piped"));
        sys::set_nonblocking(&report)?;
        let mut warm = WarmShell {
            shell_pidfd: sys::pidfd_open(shell.id() as libc::pid_t),
            shell,
            control,
            report,
            lines: Vec::new(),
            next: None,
            last: None,
        };
        warm.ask()?;
        Ok(warm)
    }

    /// Asks the shell to fork the next command's subshell now, while nothing waits for it.
    pub fn ask(&mut self) -> Result<(), Broken> {
        if self.next.is_some() {
            return Ok(());
        }
        let (stdout, stdout_end) = sys::pipe()?;
        let (stderr, stderr_end) = sys::pipe()?;
        let (go_end, go) = sys::pipe()?;
        let line = format!(
            "{} {} {}\n",
            stdout_end.as_raw_fd(),
            stderr_end.as_raw_fd(),
            go_end.as_raw_fd()
        );
        self.control.write_all(line.as_bytes())?;
        self.next = Some(Asked {
            stdout,
            stderr,
            go,
            ends: [stdout_end, stderr_end, go_end],
        });
        Ok(())
    }

    /// Hands `command` to the waiting subshell (waiting for its fork if needed).
    pub fn begin(&mut self, command: &str) -> Result<Worker, Broken> {
        self.ask()?;
        let asked = self.next.take().expect("asked");
        let until = Instant::now() + FORK_GUARD;
        let pid = loop {
            match self.wait_line(until)? {
                Line::Opened(pid) => break pid,
                Line::Exited(pid, _) if Some(pid) == self.last => {}
                Line::Exited(_, status) => {
                    return Err(Broken(format!(
                        "its subshell ended before running anything (status {status})"
                    )))
                }
            }
        };
        self.last = Some(pid);
        drop(asked.ends);
        let mut go = std::fs::File::from(asked.go);
        // A write error means the subshell died: its EXIT line says how.
        let _ = go.write_all(command.as_bytes());
        drop(go);
        Ok(Worker {
            pid,
            stdout: asked.stdout,
            stderr: asked.stderr,
        })
    }

    /// The fds to poll for the shell's lines and its end.
    pub fn poll_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        std::iter::once(self.report.as_raw_fd())
            .chain(self.shell_pidfd.as_ref().map(|p| p.as_raw_fd()))
    }

    /// The exit status of subshell `pid` once the shell reported it (never blocks).
    pub fn exit_of(&mut self, pid: libc::pid_t) -> Result<Option<i32>, Broken> {
        loop {
            match self.next_line()? {
                Some(Line::Exited(p, status)) if p == pid => return Ok(Some(status)),
                Some(_) => {}
                None if self.shell.try_wait()?.is_some() => {
                    return Err(Broken("the shell ended".into()))
                }
                None => return Ok(None),
            }
        }
    }

    fn wait_line(&mut self, until: Instant) -> Result<Line, Broken> {
        loop {
            if let Some(line) = self.next_line()? {
                return Ok(line);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Broken("its subshell did not start".into()));
            }
            let mut fds = [libc::pollfd {
                fd: self.report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            sys::poll(&mut fds, Some(left))?;
        }
    }

    /// One complete line from the shell, if one is there.
    fn next_line(&mut self) -> Result<Option<Line>, Broken> {
        loop {
            if let Some(end) = self.lines.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.lines.drain(..=end).collect();
                return Line::parse(&line[..end]).map(Some);
            }
            let mut buf = [0u8; 256];
            match sys::read(self.report.as_raw_fd(), &mut buf) {
                Ok(0) => return Err(Broken("the shell ended".into())),
                Ok(n) => self.lines.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for WarmShell {
    fn drop(&mut self) {
        // The shell's process group only: a subshell still running belongs to its caller,
        // and the waiting one ends at EOF on its GO pipe (dropped with `next`).
        let _ = sys::kill(-(self.shell.id() as libc::pid_t), libc::SIGKILL);
        let _ = self.shell.wait();
    }
}

enum Line {
    Opened(libc::pid_t),
    Exited(libc::pid_t, i32),
}

impl Line {
    fn parse(line: &[u8]) -> Result<Line, Broken> {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split(' ');
        let number = |w: Option<&str>| w.and_then(|w| w.parse().ok());
        match (words.next(), number(words.next()), number(words.next())) {
            (Some("O"), Some(pid), None) => Ok(Line::Opened(pid)),
            (Some("X"), Some(pid), Some(status)) => Ok(Line::Exited(pid, status)),
            _ => Err(Broken(format!("unexpected line from the shell: {text:?}"))),
        }
    }
}
