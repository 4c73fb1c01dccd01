//! A machine's command session: the backdoor shell or the guest's agent, whether it passed
//! its handshake, and the mapping of transport failures (shell, agent and connector errors) to
//! errors naming the machine. The rest of `machine/` does not care which one runs commands:
//! with an agent installed, commands, interactive commands and file trees go through it; the
//! backdoor shell (when the launch has one) keeps only raw access (`send_to_shell`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::{MachineInfo, MachineKind};
use crate::console::{clean, Console, Splitter};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::transport::agent::{Agent, TreeError};
use crate::transport::connector::ConnectError;
use crate::transport::shell::{Reply, Shell, ShellError};
use crate::transport::stream::Stream;
use agent_protocol::Hello;

const CONSOLE_TAIL: usize = 20;

/// The command session of one machine.
#[derive(Default)]
pub struct ShellSlot {
    shell: Mutex<Option<Shell>>,
    /// A second handle on the stream, so `clear` can wake a blocked reader.
    socket: Mutex<Option<Stream>>,
    /// The guest's agent, when the machine uses it: it then runs the commands.
    agent: Mutex<Option<Agent>>,
    agent_socket: Mutex<Option<Stream>>,
    connected: AtomicBool,
    /// The boot id of the agent's last HELLO, and the one a reboot left behind: after a
    /// reboot, an agent still answering from that boot is not the one to talk to.
    boot_id: Mutex<Option<String>>,
    stale_boot_id: Mutex<Option<String>>,
}

/// Which handshake a machine waits for, for its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The backdoor shell's `Spawning backdoor root shell...`.
    Backdoor,
    /// The agent's HELLO.
    Agent,
}

impl Via {
    fn handshake(self) -> &'static str {
        match self {
            Via::Backdoor => "backdoor handshake",
            Via::Agent => "agent handshake",
        }
    }
}

/// Shows a command's stderr as the console shows its lines (`machine # line`): in the log,
/// and in the console's text (where the backdoor's stderr goes too).
struct ConsoleLines<'a> {
    info: &'a MachineInfo,
    console: &'a Console,
    splitter: Splitter,
}

impl<'a> ConsoleLines<'a> {
    fn new(info: &'a MachineInfo, console: &'a Console) -> Self {
        ConsoleLines {
            info,
            console,
            splitter: Splitter::default(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let (info, console) = (self.info, self.console);
        self.splitter
            .feed(bytes, &mut |raw| Self::show(info, console, raw));
    }

    fn show(info: &MachineInfo, console: &Console, raw: &[u8]) {
        let line = clean(raw);
        info.logger.serial(&info.name, &line);
        console.push_raw(raw, line);
    }
}

impl Drop for ConsoleLines<'_> {
    fn drop(&mut self) {
        let (info, console) = (self.info, self.console);
        self.splitter
            .finish(&mut |raw| Self::show(info, console, raw));
    }
}

fn not_running(info: &MachineInfo, command: &str) -> Error {
    Error::InvalidState {
        machine: info.name.clone(),
        message: format!("cannot run `{command}`: the machine is not running"),
    }
}

/// A guest failure naming the machine, with the console's last lines.
pub fn guest_error(info: &MachineInfo, console: &Console, message: String) -> Error {
    Error::Guest {
        machine: info.name.clone(),
        message,
        console_tail: console.tail(CONSOLE_TAIL),
    }
}

/// A failed handshake as an error naming the machine; `exit_note` describes how the
/// machine's process ended.
pub fn handshake_error(
    info: &MachineInfo,
    console: &Console,
    via: Via,
    e: ShellError,
    exit_note: &dyn Fn() -> String,
) -> Error {
    match e {
        ShellError::Interrupted => Error::Interrupted,
        ShellError::TimedOut => handshake_timeout(info, console, via, None),
        ShellError::Disconnected => guest_error(
            info,
            console,
            format!(
                "the machine stopped before the {}{}",
                via.handshake(),
                exit_note()
            ),
        ),
        e => guest_error(
            info,
            console,
            format!("waiting for the {}: {e}", via.handshake()),
        ),
    }
}

/// No handshake before the boot deadline; `detail`: what the connector last heard.
fn handshake_timeout(
    info: &MachineInfo,
    console: &Console,
    via: Via,
    detail: Option<String>,
) -> Error {
    let secs = info.boot_timeout.unwrap_or_default().as_secs_f64();
    let what = match via {
        Via::Backdoor => "the guest never printed `Spawning backdoor root shell...`".to_string(),
        Via::Agent => format!(
            "the guest's agent (nixos-test-ng-agent) never said hello{}",
            detail.map(|d| format!(" ({d})")).unwrap_or_default()
        ),
    };
    guest_error(
        info,
        console,
        format!(
            "no {} within {secs:.0} s of the start: {what} (raise --boot-timeout if it is just slow)",
            via.handshake()
        ),
    )
}

/// A failure of the agent's connector as an error naming the machine: running out of time
/// (or only hearing refusals until then) is the handshake's timeout.
pub fn agent_connect_error(
    info: &MachineInfo,
    kind: MachineKind,
    console: &Console,
    e: ConnectError,
) -> Error {
    match e {
        ConnectError::TimedOut => handshake_timeout(info, console, Via::Agent, None),
        ConnectError::Refused(answer) => handshake_timeout(info, console, Via::Agent, Some(answer)),
        e => connect_error(info, kind, console, e),
    }
}

/// A connector's failure as an error naming the machine.
pub fn connect_error(
    info: &MachineInfo,
    kind: MachineKind,
    console: &Console,
    e: ConnectError,
) -> Error {
    match e {
        ConnectError::Interrupted => Error::Interrupted,
        ConnectError::Exited(status) => guest_error(
            info,
            console,
            format!(
                "{} exited ({status}) before the guest's shell connected",
                kind.backend_name()
            ),
        ),
        ConnectError::TimedOut => guest_error(
            info,
            console,
            "no connection to the guest's shell in time".into(),
        ),
        ConnectError::Guest(message) => guest_error(info, console, message),
        ConnectError::Host(message) => Error::Config(message),
        e @ ConnectError::Refused(_) => guest_error(info, console, e.to_string()),
        ConnectError::Io { context, source } => {
            Error::io(format!("{}: {context}", info.name), source)
        }
    }
}

impl ShellSlot {
    /// Installs a new connection (not yet connected: the handshake comes next).
    pub fn set(&self, shell: Shell) {
        *self.socket.lock().unwrap() = shell.clone_stream().ok();
        *self.shell.lock().unwrap() = Some(shell);
        self.connected.store(false, Ordering::SeqCst);
    }

    /// Installs a connection that is already in step with its guest (a warm standby's).
    pub fn set_synced(&self, shell: Shell) {
        self.set(shell);
        self.connected.store(true, Ordering::SeqCst);
    }

    /// True while there is a connection (handshake passed or not).
    pub fn has_shell(&self) -> bool {
        self.shell.lock().unwrap().is_some()
    }

    /// Drops the connections (shell and agent), waking any reader.
    pub fn clear(&self) {
        if let Some(sock) = self.socket.lock().unwrap().take() {
            let _ = sock.shutdown();
        }
        *self.shell.lock().unwrap() = None;
        self.drop_agent();
    }

    /// Installs a new agent connection (not yet connected: its HELLO comes next). From now
    /// on the agent runs the commands.
    pub fn set_agent(&self, agent: Agent) {
        self.drop_agent();
        *self.agent_socket.lock().unwrap() = agent.clone_stream().ok();
        *self.agent.lock().unwrap() = Some(agent);
    }

    /// Drops the agent connection, waking any reader.
    pub fn drop_agent(&self) {
        if let Some(sock) = self.agent_socket.lock().unwrap().take() {
            let _ = sock.shutdown();
        }
        *self.agent.lock().unwrap() = None;
        self.connected.store(false, Ordering::SeqCst);
    }

    /// A second handle on the agent's stream, for tests that cut the connection.
    #[cfg(test)]
    pub(crate) fn agent_stream(&self) -> Option<Stream> {
        self.agent_socket
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|s| s.try_clone_stream().ok())
    }

    /// True while an agent connection is installed (the agent runs the commands).
    pub fn has_agent(&self) -> bool {
        self.agent.lock().unwrap().is_some()
    }

    /// Waits for the agent's HELLO; `on_idle` runs when a slice passes without data.
    pub fn agent_handshake(
        &self,
        deadline: Deadline,
        on_idle: &mut dyn FnMut() -> bool,
    ) -> std::result::Result<Hello, ShellError> {
        let mut guard = self.agent.lock().unwrap();
        let agent = guard.as_mut().ok_or(ShellError::Disconnected)?;
        let hello = agent.handshake(deadline, on_idle)?;
        drop(guard);
        self.connected.store(true, Ordering::SeqCst);
        Ok(hello)
    }

    /// Copies a host file or tree to `guest` through the agent (see [`Agent::put_tree`]).
    pub fn put_tree(
        &self,
        info: &MachineInfo,
        console: &Console,
        host: &std::path::Path,
        guest: &str,
        deadline: Deadline,
    ) -> Result<()> {
        let what = format!("copying {} to {guest}", host.display());
        let mut guard = self.agent.lock().unwrap();
        let agent = guard.as_mut().ok_or_else(|| not_running(info, &what))?;
        let result = agent.put_tree(host, guest, 0, 0, deadline);
        self.note_broken(agent);
        drop(guard);
        result.map_err(|e| self.tree_error(info, console, &what, e))
    }

    /// Copies the guest's file or tree at `guest` to `<parent>/<name>` on the host through
    /// the agent (see [`Agent::get_tree`]).
    pub fn get_tree(
        &self,
        info: &MachineInfo,
        console: &Console,
        guest: &str,
        parent: &std::path::Path,
        name: &str,
        deadline: Deadline,
    ) -> Result<()> {
        let what = format!("copying {guest} from the machine");
        let mut guard = self.agent.lock().unwrap();
        let agent = guard.as_mut().ok_or_else(|| not_running(info, &what))?;
        let result = agent.get_tree(guest, parent, name, deadline);
        self.note_broken(agent);
        drop(guard);
        result.map_err(|e| self.tree_error(info, console, &what, e))
    }

    /// An agent connection out of step or gone is replaced at the machine's next connect.
    fn note_broken(&self, agent: &Agent) {
        if agent.is_broken() {
            self.connected.store(false, Ordering::SeqCst);
        }
    }

    /// True when raw shell access has no shell to reach: the agent runs the commands and the
    /// launch has no backdoor stream.
    pub fn agent_only(&self) -> bool {
        self.has_agent() && !self.has_shell()
    }

    fn tree_error(&self, info: &MachineInfo, console: &Console, what: &str, e: TreeError) -> Error {
        match e {
            TreeError::Transport(e) => self.command_error(info, console, what, e, &String::new),
            TreeError::Refused(message) => guest_error(info, console, format!("{what}: {message}")),
            TreeError::Host(fault) => Error::io(
                format!("{}: {what}", info.name),
                std::io::Error::other(fault.to_string()),
            ),
        }
    }

    /// True once the handshake passed.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Marks the shell as needing a new handshake (after a reboot).
    pub fn disconnect(&self) {
        self.connected.store(false, Ordering::SeqCst);
        *self.stale_boot_id.lock().unwrap() = self.boot_id.lock().unwrap().clone();
    }

    /// True when `hello` comes from the boot a reboot was asked to end (the old agent still
    /// answers until the guest goes down); false once another boot answered.
    pub fn from_ended_boot(&self, hello: &Hello) -> bool {
        hello.boot_id.is_some() && *self.stale_boot_id.lock().unwrap() == hello.boot_id
    }

    /// Remembers which boot the connected agent runs in.
    pub fn record_boot(&self, hello: &Hello) {
        *self.boot_id.lock().unwrap() = hello.boot_id.clone();
        *self.stale_boot_id.lock().unwrap() = None;
    }

    /// Waits for the handshake; `on_idle` runs when a slice passes without data.
    pub fn handshake(
        &self,
        deadline: Deadline,
        on_idle: &mut dyn FnMut() -> bool,
    ) -> std::result::Result<(), ShellError> {
        let mut guard = self.shell.lock().unwrap();
        let shell = guard.as_mut().ok_or(ShellError::Disconnected)?;
        shell.wait_for_handshake(deadline, on_idle)?;
        drop(guard);
        self.connected.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Drops what the backdoor's stream holds, reading until it stayed quiet for `quiet`.
    pub fn discard_pending(&self, quiet: Duration) {
        if let Some(shell) = self.shell.lock().unwrap().as_mut() {
            while let Ok(bytes) = shell.recv_raw(1 << 20, Deadline::after(Some(quiet))) {
                if bytes.is_empty() {
                    break;
                }
            }
        }
    }

    /// Sends raw bytes (e.g. `poweroff\n`); nothing happens without a connection.
    pub fn send_raw(&self, info: &MachineInfo, console: &Console, data: &[u8]) -> Result<()> {
        match self.shell.lock().unwrap().as_mut() {
            Some(shell) => shell
                .send_raw(data)
                .map_err(|e| guest_error(info, console, format!("writing to the shell: {e}"))),
            None => Ok(()),
        }
    }

    /// Reads up to `max` raw bytes from the shell (see [`Shell::recv_raw`]).
    pub fn recv_raw(
        &self,
        info: &MachineInfo,
        console: &Console,
        max: usize,
        deadline: Deadline,
    ) -> Result<Vec<u8>> {
        match self.shell.lock().unwrap().as_mut() {
            Some(shell) => shell.recv_raw(max, deadline).map_err(|e| match e {
                ShellError::Interrupted => Error::Interrupted,
                e => guest_error(info, console, format!("reading from the shell: {e}")),
            }),
            None => Ok(Vec::new()),
        }
    }

    /// Runs one command; `exit_note` describes how the machine ended when it vanished.
    #[allow(clippy::too_many_arguments)]
    pub fn execute(
        &self,
        info: &MachineInfo,
        console: &Console,
        command: &str,
        timeout: Option<Duration>,
        reply: Reply,
        deadline: Deadline,
        exit_note: &dyn Fn() -> String,
    ) -> Result<(i32, Vec<u8>)> {
        let mut guard = self.agent.lock().unwrap();
        if let Some(agent) = guard.as_mut() {
            agent.set_traceparent(info.logger.command_traceparent());
            let mut lines = ConsoleLines::new(info, console);
            let result = agent.execute(command, timeout, reply, deadline, &mut |b| lines.push(b));
            self.note_broken(agent);
            drop(lines);
            drop(guard);
            return result.map_err(|e| self.command_error(info, console, command, e, exit_note));
        }
        drop(guard);
        let mut guard = self.shell.lock().unwrap();
        let shell = guard.as_mut().ok_or_else(|| not_running(info, command))?;
        shell.set_traceparent(info.logger.command_traceparent());
        let result = shell.execute(command, timeout, reply, deadline);
        drop(guard);
        result.map_err(|e| self.command_error(info, console, command, e, exit_note))
    }

    /// A failed command as an error naming the machine; a vanished guest also marks the shell
    /// as disconnected.
    fn command_error(
        &self,
        info: &MachineInfo,
        console: &Console,
        command: &str,
        e: ShellError,
        exit_note: &dyn Fn() -> String,
    ) -> Error {
        match e {
            ShellError::Interrupted => Error::Interrupted,
            // killed by the global timeout
            ShellError::Disconnected if crate::interrupt::timed_out() => Error::Interrupted,
            ShellError::Disconnected if self.has_agent() => {
                self.connected.store(false, Ordering::SeqCst);
                let note = exit_note();
                guest_error(
                    info,
                    console,
                    format!("the guest's agent disconnected while running `{command}`{note}"),
                )
            }
            ShellError::Disconnected => {
                self.connected.store(false, Ordering::SeqCst);
                let note = exit_note();
                guest_error(
                    info,
                    console,
                    format!("the machine stopped while running `{command}`{note}"),
                )
            }
            ShellError::TimedOut => guest_error(
                info,
                console,
                format!(
                    "no answer from the guest to `{command}` in time (the command's timeout \
                     plus {} s)",
                    super::api::HOST_GRACE.as_secs()
                ),
            ),
            e => guest_error(info, console, format!("running `{command}`: {e}")),
        }
    }

    /// Runs one interactive command (see [`Shell::interact`]).
    pub fn interact(
        &self,
        info: &MachineInfo,
        console: &Console,
        command: &str,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<i32> {
        let mut guard = self.agent.lock().unwrap();
        if let Some(agent) = guard.as_mut() {
            let result = agent.interact(command, out);
            self.note_broken(agent);
            drop(guard);
            return result.map_err(|e| self.command_error(info, console, command, e, &String::new));
        }
        drop(guard);
        let mut guard = self.shell.lock().unwrap();
        let shell = guard.as_mut().ok_or_else(|| not_running(info, command))?;
        let result = shell.interact(command, out);
        drop(guard);
        result.map_err(|e| self.command_error(info, console, command, e, &String::new))
    }

    /// Resynchronises the shell after the guest was rewound (see [`Shell::resync`]).
    pub fn resync(&self, info: &MachineInfo, console: &Console, deadline: Deadline) -> Result<()> {
        let mut guard = self.shell.lock().unwrap();
        let shell = guard.as_mut().ok_or_else(|| Error::InvalidState {
            machine: info.name.clone(),
            message: "the machine is not running".to_string(),
        })?;
        match shell.resync(deadline) {
            Ok(()) => {
                self.connected.store(true, Ordering::SeqCst);
                Ok(())
            }
            Err(ShellError::Interrupted) => Err(Error::Interrupted),
            Err(e) => Err(guest_error(
                info,
                console,
                format!("the shell after a restore: {e}"),
            )),
        }
    }
}
