//! A machine's shell connection: the connection, whether it passed the handshake, and the
//! mapping of transport failures (shell and connector errors) to errors naming the machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::{MachineInfo, MachineKind};
use crate::console::Console;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::transport::connector::ConnectError;
use crate::transport::shell::{Reply, Shell, ShellError};
use crate::transport::stream::Stream;

const CONSOLE_TAIL: usize = 20;

/// The shell of one machine.
#[derive(Default)]
pub struct ShellSlot {
    shell: Mutex<Option<Shell>>,
    /// A second handle on the stream, so `clear` can wake a blocked reader.
    socket: Mutex<Option<Stream>>,
    connected: AtomicBool,
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
    e: ShellError,
    exit_note: &dyn Fn() -> String,
) -> Error {
    match e {
        ShellError::Interrupted => Error::Interrupted,
        ShellError::TimedOut => {
            let secs = info.boot_timeout.unwrap_or_default().as_secs_f64();
            guest_error(
                info,
                console,
                format!(
                    "no backdoor handshake within {secs:.0} s of the start: the guest never printed `Spawning backdoor root shell...` (raise --boot-timeout if it is just slow)"
                ),
            )
        }
        ShellError::Disconnected => guest_error(
            info,
            console,
            format!(
                "the machine stopped before the backdoor handshake{}",
                exit_note()
            ),
        ),
        e => guest_error(info, console, format!("waiting for the handshake: {e}")),
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

    /// Drops the connection, waking any reader.
    pub fn clear(&self) {
        if let Some(sock) = self.socket.lock().unwrap().take() {
            let _ = sock.shutdown();
        }
        *self.shell.lock().unwrap() = None;
        self.connected.store(false, Ordering::SeqCst);
    }

    /// True once the handshake passed.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Marks the shell as needing a new handshake (after a reboot).
    pub fn disconnect(&self) {
        self.connected.store(false, Ordering::SeqCst);
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
                format!("no answer from the guest to `{command}` in time (the command's timeout plus 60 s)"),
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
