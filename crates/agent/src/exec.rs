//! EXEC: a command run by the connection's warm shell (see `warm`), or, when it reads stdin
//! or the warm shell cannot take it, by its own `bash -c` in a new session; stdout and stderr
//! streamed apart, stdin from STDIN frames, SIGNAL to the process group, the timeout, and the
//! exit status.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agent_protocol::{encode_json, Exec, Exit, Kind, Signal, DATA_CHUNK};

use crate::conn::{Conn, End};
use crate::sys;
use crate::warm::{Broken, WarmShell};

/// After the command exited, output still arriving (a background child holding the pipes)
/// is forwarded until the pipes stay quiet this long...
const QUIET: Duration = Duration::from_millis(100);
/// ...but for no longer than this after the exit.
const DRAIN_CAP: Duration = Duration::from_secs(1);
/// Without a pidfd, how often the exit is checked for while the pipes are quiet.
const EXIT_TICK: Duration = Duration::from_millis(10);
/// STDIN bytes buffered beyond this stop the agent reading more frames until the command
/// takes them.
const STDIN_BACKLOG: usize = 1 << 20;
/// The exit status of a command killed at its timeout (coreutils' `timeout`).
const TIMEOUT_STATUS: i32 = 124;

pub fn run(conn: &mut Conn, req: Exec) -> Result<(), End> {
    let timeout = req.timeout_ms.map(Duration::from_millis);
    if !req.stdin {
        if let Some(mut warm) = conn.take_warm_shell() {
            match warm.begin(&req.command) {
                Ok(worker) => {
                    let mut run = Running::new(worker.pid, Proc::Warm, timeout);
                    run.set_outputs(Some(worker.stdout), Some(worker.stderr));
                    let result = run.pump(conn, Some(&mut warm));
                    if result.is_err() {
                        run.kill_and_reap();
                        return result.map(drop);
                    }
                    if run.status.as_ref().is_some_and(Ended::is_known) {
                        conn.put_warm_shell(warm);
                    }
                    return run.reply(conn);
                }
                Err(Broken(why)) => conn.warm_shell_failed(&why),
            }
        }
    }
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&req.command)
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid and reset_signals are async-signal-safe; nothing else is touched.
    unsafe {
        cmd.pre_exec(|| {
            sys::reset_signals();
            sys::cvt(libc::setsid()).map(drop)
        });
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return conn.send_error(format!("cannot run bash: {e}")),
    };
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let stdin = child.stdin.take();
    let proc = Proc::Child {
        pidfd: sys::pidfd_open(pid),
        child,
    };
    let mut run = Running::new(pid, proc, timeout);
    run.set_outputs(stdout, stderr);
    run.set_stdin(stdin);
    let result = run.pump(conn, None);
    if result.is_err() {
        run.kill_and_reap();
        return result.map(drop);
    }
    run.reply(conn)
}

/// Who started the command, which says how its end is learnt.
enum Proc {
    /// Our own child: waitpid, and its pidfd (Linux 5.3+) to poll.
    Child {
        child: Child,
        pidfd: Option<OwnedFd>,
    },
    /// The warm shell's subshell: the shell reports its status.
    Warm,
}

/// How the command ended.
enum Ended {
    Status(ExitStatus),
    /// As the warm shell reports it: 128+n for a signal, like `$?`.
    ShellStatus(i32),
    /// The warm shell died while the command ran (e.g. `kill -9 $$`).
    Unknown(String),
}

impl Ended {
    fn is_known(&self) -> bool {
        !matches!(self, Ended::Unknown(_))
    }
}

/// A pipe from the command, read until EOF.
struct Output {
    kind: Kind,
    pipe: Option<OwnedFd>,
}

struct Running {
    proc: Proc,
    pid: libc::pid_t,
    outputs: [Output; 2],
    stdin: Option<ChildStdin>,
    stdin_pending: Vec<u8>,
    stdin_close: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    status: Option<Ended>,
    /// Once exited: when to stop waiting for the pipes, and the latest that may become.
    quiet_until: Option<Instant>,
    drain_until: Option<Instant>,
}

impl Running {
    fn new(pid: libc::pid_t, proc: Proc, timeout: Option<Duration>) -> Running {
        Running {
            proc,
            pid,
            outputs: [
                Output {
                    kind: Kind::Stdout,
                    pipe: None,
                },
                Output {
                    kind: Kind::Stderr,
                    pipe: None,
                },
            ],
            stdin: None,
            stdin_pending: Vec::new(),
            stdin_close: false,
            deadline: timeout.map(|t| Instant::now() + t),
            timed_out: false,
            status: None,
            quiet_until: None,
            drain_until: None,
        }
    }

    fn set_outputs(&mut self, stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) {
        for (out, pipe) in self.outputs.iter_mut().zip([stdout, stderr]) {
            if let Some(fd) = &pipe {
                // A larger pipe means fewer, larger frames for big outputs; best effort.
                // SAFETY: fcntl on an open fd.
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
            }
            out.pipe = pipe;
        }
    }

    fn set_stdin(&mut self, stdin: Option<ChildStdin>) {
        if let Some(s) = &stdin {
            // Writes must never block the loop that also forwards output.
            let _ = sys::set_nonblocking(s);
        }
        self.stdin = stdin;
    }

    /// Forwards output and input until the command is over (see the module's rules).
    fn pump(&mut self, conn: &mut Conn, mut warm: Option<&mut WarmShell>) -> Result<(), End> {
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            while let Some(frame) = conn.buffered_frame()? {
                match frame.kind {
                    Kind::Stdin => self.take_stdin(frame.body),
                    Kind::Signal => self.signal(frame.json::<Signal>()?.signal),
                    other => {
                        return Err(End::Broken(format!("unexpected {other} frame during EXEC")))
                    }
                }
            }
            self.write_stdin();
            self.check_exit(warm.as_deref_mut())?;
            let now = Instant::now();
            if self.status.is_some() {
                let pipes_done = self.outputs.iter().all(|o| o.pipe.is_none());
                if pipes_done || self.quiet_until.is_some_and(|q| now >= q) {
                    return Ok(());
                }
            } else if let Some(deadline) = self.deadline {
                if !self.timed_out && now >= deadline {
                    let _ = sys::kill(-self.pid, libc::SIGKILL);
                    self.timed_out = true;
                }
            }

            let mut fds = Vec::with_capacity(5);
            let watch_conn = self.stdin_pending.len() < STDIN_BACKLOG;
            if watch_conn {
                fds.push(pollfd(conn.fd(), libc::POLLIN));
            }
            for out in &self.outputs {
                if let Some(p) = &out.pipe {
                    fds.push(pollfd(p.as_raw_fd(), libc::POLLIN));
                }
            }
            if let (Some(s), false) = (&self.stdin, self.stdin_pending.is_empty()) {
                fds.push(pollfd(s.as_raw_fd(), libc::POLLOUT));
            }
            if self.status.is_none() {
                match (&self.proc, &warm) {
                    (Proc::Child { pidfd: Some(p), .. }, _) => {
                        fds.push(pollfd(p.as_raw_fd(), libc::POLLIN))
                    }
                    (Proc::Warm, Some(w)) => {
                        fds.extend(w.poll_fds().map(|fd| pollfd(fd, libc::POLLIN)))
                    }
                    _ => {}
                }
            }
            sys::poll(&mut fds, self.poll_timeout(now))?;

            for fd in fds.iter().filter(|f| f.revents != 0) {
                if watch_conn && fd.fd == conn.fd() && !conn.fill_once()? {
                    return Err(End::Closed);
                }
                if let Some(i) = self.output_index(fd.fd) {
                    self.forward(i, &mut buf, conn)?;
                }
                if fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
                    && self.stdin.as_ref().is_some_and(|s| s.as_raw_fd() == fd.fd)
                {
                    self.drop_stdin();
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.status.is_none() {
            if let (Some(d), false) = (self.deadline, self.timed_out) {
                at(d);
            }
            if let Proc::Child { pidfd: None, .. } = self.proc {
                at(now + EXIT_TICK);
            }
        } else if let Some(q) = self.quiet_until {
            at(q);
        }
        wake.map(|w| w.saturating_duration_since(now))
    }

    fn output_index(&self, fd: RawFd) -> Option<usize> {
        self.outputs
            .iter()
            .position(|o| o.pipe.as_ref().is_some_and(|p| p.as_raw_fd() == fd))
    }

    fn forward(&mut self, i: usize, buf: &mut [u8], conn: &mut Conn) -> Result<(), End> {
        let out = &mut self.outputs[i];
        let fd = out
            .pipe
            .as_ref()
            .map(|p| p.as_raw_fd())
            .expect("polled pipe");
        match sys::read(fd, buf) {
            Ok(0) | Err(_) => out.pipe = None,
            Ok(n) => {
                conn.send(out.kind, &buf[..n])?;
                if let (Some(q), Some(cap)) = (&mut self.quiet_until, self.drain_until) {
                    *q = (Instant::now() + QUIET).min(cap);
                }
            }
        }
        Ok(())
    }

    fn take_stdin(&mut self, data: Vec<u8>) {
        if self.stdin.is_none() {
            return;
        }
        if data.is_empty() {
            self.stdin_close = true;
        } else if !self.stdin_close {
            self.stdin_pending.extend_from_slice(&data);
        }
    }

    fn write_stdin(&mut self) {
        let Some(stdin) = &mut self.stdin else {
            return;
        };
        while !self.stdin_pending.is_empty() {
            match stdin.write(&self.stdin_pending) {
                Ok(n) => {
                    self.stdin_pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The command closed its stdin (or ended): the rest has no reader.
                Err(_) => return self.drop_stdin(),
            }
        }
        if self.stdin_close {
            self.drop_stdin();
        }
    }

    fn drop_stdin(&mut self) {
        self.stdin = None;
        self.stdin_pending = Vec::new();
    }

    fn signal(&mut self, signal: i32) {
        if self.status.is_none() {
            let _ = sys::kill(-self.pid, signal);
        }
    }

    fn check_exit(&mut self, warm: Option<&mut WarmShell>) -> Result<(), End> {
        if self.status.is_some() {
            return Ok(());
        }
        let ended = match (&mut self.proc, warm) {
            (Proc::Child { child, .. }, _) => child.try_wait()?.map(Ended::Status),
            (Proc::Warm, Some(warm)) => match warm.exit_of(self.pid) {
                Ok(Some(status)) => {
                    // Fork the next command's subshell while this one's output drains.
                    let _ = warm.ask();
                    Some(Ended::ShellStatus(status))
                }
                Ok(None) => None,
                Err(Broken(why)) => {
                    let _ = sys::kill(-self.pid, libc::SIGKILL);
                    Some(Ended::Unknown(why))
                }
            },
            (Proc::Warm, None) => unreachable!("a warm command is pumped with its shell"),
        };
        if let Some(ended) = ended {
            let now = Instant::now();
            self.status = Some(ended);
            self.quiet_until = Some(now + QUIET);
            self.drain_until = Some(now + DRAIN_CAP);
            self.drop_stdin();
        }
        Ok(())
    }

    /// EXIT, or ERROR when the warm shell died under the command.
    fn reply(&self, conn: &mut Conn) -> Result<(), End> {
        let ended = self
            .status
            .as_ref()
            .expect("pump returns Ok only after the end");
        if let Ended::Unknown(why) = ended {
            return conn.send_error(format!(
                "the agent's shell ended while the command ran ({why}; killed by `kill -9 $$`?): \
                 its exit status is unknown"
            ));
        }
        let exit = if self.timed_out {
            Exit {
                status: TIMEOUT_STATUS,
                signal: None,
                timed_out: true,
            }
        } else {
            match ended {
                Ended::Status(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => Exit {
                        status: code,
                        signal: None,
                        timed_out: false,
                    },
                    (None, Some(sig)) => Exit {
                        status: 128 + sig,
                        signal: Some(sig),
                        timed_out: false,
                    },
                    (None, None) => Exit {
                        status: -1,
                        signal: None,
                        timed_out: false,
                    },
                },
                Ended::ShellStatus(status) => Exit {
                    status: *status,
                    signal: None,
                    timed_out: false,
                },
                Ended::Unknown(_) => unreachable!("answered above"),
            }
        };
        conn.send_encoded(encode_json(Kind::Exit, &exit))
    }

    /// The host went away or broke the protocol mid-command: nothing is left running.
    fn kill_and_reap(&mut self) {
        if self.status.is_none() {
            let _ = sys::kill(-self.pid, libc::SIGKILL);
            // The warm shell reaps its subshell itself.
            if let Proc::Child { child, .. } = &mut self.proc {
                let _ = child.wait();
            }
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
