//! A machine's lifecycle, written once for every backend: start (the backend's launch),
//! connect (the connector's stream, the handshake and its log lines), power off, wait for
//! the end, release, and adopting a new launch (a warm standby taking over).
//!
//! ```text
//!        start                  connect (handshake)
//!  Off ─────────► Booting ──────────────────────────► Up
//!   ▲               │  ▲                               │
//!   │               │  └── mark_disconnected (reboot) ─┘
//!   │               ▼  process ends
//!   └───────────  Exited  ◄───────────────────────────┘
//!    wait_for_shutdown / release (any state)
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::shell::{agent_connect_error, connect_error, guest_error, handshake_error, Via};
use super::{Machine, Run};
use crate::backend::{Host, LaunchOptions, Launched, MachineInfo, PowerOff, ShellSetup};
use crate::config::{Transport, TRANSPORT_VAR};
use crate::console::Console;
use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::process::ChildProcess;
use crate::trace::{SpanKind, SpanStatus};
use crate::transport::agent::Agent;
use crate::transport::connector::{ConnectError, Connector};
use crate::transport::shell::{Reply, Shell, ShellError};

/// How often "Guest root shell did not produce any data yet..." is logged.
const IDLE_NOTE_EVERY: Duration = Duration::from_secs(30);
/// How long a machine's process may take to end after its shell vanished, for the note that
/// says how it ended.
const EXIT_NOTE_WAIT: Duration = Duration::from_secs(2);
/// How long the console may take to close after the machine's process ended.
const CONSOLE_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// How long one try to reach the agent's port lasts before the machine's process is checked.
const AGENT_CONNECT_SLICE: Duration = Duration::from_millis(250);
/// How long a connection made through a connector that reconnects waits for the agent's
/// HELLO before it is dropped and made again; doubled after each such try, up to
/// [`HELLO_WAIT_MAX`]. The agent says HELLO as it accepts, but vhost-device-vsock 0.3.0 can
/// answer `OK` on a connection whose guest side it has already reset (the agent logs
/// "dropped: Broken pipe" writing its HELLO): that stream stays open and never carries a byte.
const HELLO_WAIT_FIRST: Duration = Duration::from_secs(2);
/// See [`HELLO_WAIT_FIRST`].
const HELLO_WAIT_MAX: Duration = Duration::from_secs(16);
/// Before connecting again when a fresh stream disconnected before its handshake.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// How long the backdoor's stream must stay quiet for its old boot's output to be dropped
/// (a reboot takes seconds before the new boot says anything).
const STALE_OUTPUT_QUIET: Duration = Duration::from_millis(50);

/// Where a machine is in its lifecycle (as Firecracker's `VmState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or stopped and cleaned up.
    Off,
    /// Launched; its shell has not passed the handshake (yet, or again after a reboot).
    Booting,
    /// The shell passed the handshake: commands run.
    Up,
    /// Its process ended; nobody waited for it yet (`wait_for_shutdown`, `release`).
    Exited,
}

impl Machine {
    /// Where the machine is in its lifecycle.
    pub fn state(&self) -> State {
        let run = self.run.lock().unwrap();
        match &*run {
            None => State::Off,
            Some(r) if !r.process.is_running() => State::Exited,
            Some(_) if self.shell.is_connected() => State::Up,
            Some(_) => State::Booting,
        }
    }

    /// Started: launched and, for kinds that count so, its process still running.
    pub fn booted(&self) -> bool {
        match &*self.run.lock().unwrap() {
            None => false,
            Some(r) => !self.kind().booted_while_process_runs() || r.process.is_running(),
        }
    }

    /// Connected: the shell passed the handshake.
    pub fn connected(&self) -> bool {
        self.shell.is_connected()
    }

    /// Started and connected.
    pub fn is_up(&self) -> bool {
        self.booted() && self.connected()
    }

    /// The machine process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.run.lock().unwrap().as_ref().map(|r| r.process.pid())
    }

    /// The machine's process (the start script, which execs QEMU or systemd-nspawn): the
    /// running one; a VM also keeps its last one after it stopped, as upstream.
    pub fn process(&self) -> Option<Arc<ChildProcess>> {
        match &*self.run.lock().unwrap() {
            Some(r) => Some(r.process.clone()),
            None => self.last_process.lock().unwrap().clone(),
        }
    }

    /// Starts the machine (returns before it has booted). Its boot span runs from here to
    /// the first successful [`Machine::connect`].
    pub fn start(&self, allow_reboot: bool) -> Result<()> {
        interrupt::check_ending()?;
        let was_booted = self.booted();
        let logger = &self.info.logger;
        let span = (!was_booted).then(|| {
            logger.begin_detached(
                SpanKind::Boot,
                &format!("boot {}", self.name()),
                Some(self.name()),
            )
        });
        let started = self.launch(allow_reboot);
        if let Some(span) = span {
            match &started {
                Ok(()) => *self.boot_span.lock().unwrap() = Some(span),
                Err(e) => logger.end_span(span, SpanStatus::Error(e.to_string())),
            }
        }
        started
    }

    /// Launches the machine unless it is booted, or again after the guest's reset ended a
    /// launch that allows reboots (`Facts::reset_ends_process`; with the same
    /// `allow_reboot`).
    fn launch(&self, allow_reboot: bool) -> Result<()> {
        let _starting = self.starting.lock().unwrap();
        let mut allow_reboot = allow_reboot;
        if self.booted() {
            if !self.reset_ended_launch() {
                return Ok(());
            }
            self.log("the guest's reset ended its process: starting it again");
            allow_reboot = true;
            self.clear(false);
        }
        // A launch whose process ended and that counts as stopped already (a container).
        if self.run.lock().unwrap().is_some() {
            self.clear(false);
        }
        self.console.reset();
        *self.started_at.lock().unwrap() = Some(Instant::now());
        let launched = self.backend.launch(self, LaunchOptions { allow_reboot })?;
        self.allow_reboot.store(allow_reboot, Ordering::SeqCst);
        self.install(launched)
    }

    /// The running launch allows reboots, and its process ended, which for this kind is the
    /// guest's reset (a reboot, or a panic with `panic=N`).
    fn reset_ended_launch(&self) -> bool {
        self.kind().reset_ends_process()
            && self.allow_reboot.load(Ordering::SeqCst)
            && self
                .run
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|r| !r.process.is_running())
    }

    /// Makes `launched` the machine's running launch.
    fn install(&self, launched: Launched) -> Result<()> {
        let Launched {
            process,
            console_reader,
            mut connector,
            shell,
            shell_in_step,
            agent,
        } = launched;
        let agent = match self.choose_agent(agent) {
            Ok(agent) => agent,
            Err(e) => {
                self.backend.kill(self, &process);
                let _ = console_reader.join();
                self.backend.stopped(false);
                return Err(e);
            }
        };
        if let Some(in_step) = shell_in_step {
            self.shell.set_synced(in_step);
        } else if connector.is_ready() {
            // Raw bytes (a `poweroff`) can go to the stream before the handshake.
            let stream = connector
                .connect(Deadline::NEVER)
                .map_err(|e| connect_error(&self.info, self.kind(), &self.console, e))?;
            self.shell.set(new_shell(stream, &shell));
        }
        *self.run.lock().unwrap() = Some(Run {
            process,
            console_reader: Some(console_reader),
            connector: Arc::new(Mutex::new(connector)),
            agent: agent.map(|a| Arc::new(Mutex::new(a))),
            setup: Arc::new(shell),
        });
        Ok(())
    }

    /// The agent's connector when the machine is to use it: `NIXOS_TEST_NG_TRANSPORT` unset,
    /// the agent when the launch set one up; `backdoor`, never; `agent`, always (an error
    /// naming the machine when there is none). Backends without agents (containers) ignore
    /// the variable.
    fn choose_agent(
        &self,
        agent: Option<Box<dyn Connector>>,
    ) -> Result<Option<Box<dyn Connector>>> {
        if !self.kind().takes_guest_agent() {
            return Ok(None);
        }
        match (self.info.transport, agent) {
            (Transport::Backdoor, _) => Ok(None),
            (Transport::Auto, agent) => Ok(agent),
            (Transport::Agent, Some(agent)) => Ok(Some(agent)),
            (Transport::Agent, None) => Err(Error::InvalidState {
                machine: self.name().to_string(),
                message: format!(
                    "{TRANSPORT_VAR}=agent, but the {} backend set up no guest agent for this machine (its guest has none, or its start script takes no vsock device): unset {TRANSPORT_VAR} or set it to `backdoor`",
                    self.kind().backend_name()
                ),
            }),
        }
    }

    /// Waits for the backdoor (starting the machine first when needed, as upstream).
    pub fn connect(&self) -> Result<()> {
        interrupt::check_ending()?;
        let connected = self.connect_shell();
        if let Some(span) = self.boot_span.lock().unwrap().take() {
            let status = match &connected {
                Ok(()) => SpanStatus::Ok,
                Err(e) => SpanStatus::Error(e.to_string()),
            };
            self.info.logger.end_span(span, status);
        }
        connected
    }

    fn connect_shell(&self) -> Result<()> {
        if self.connected() {
            return Ok(());
        }
        let noun = self.kind().noun();
        let block = self.nested(&format!("waiting for the {noun} to finish booting"));
        self.launch(false)?;
        if self.connected() {
            // a launch that hands over a shell already in step (a start from the boot cache)
            block.finish();
            return Ok(());
        }
        let (connector, agent, setup) = match &*self.run.lock().unwrap() {
            Some(r) => (r.connector.clone(), r.agent.clone(), r.setup.clone()),
            None => {
                return Err(Error::InvalidState {
                    machine: self.name().to_string(),
                    message: format!("the {noun} is not running"),
                })
            }
        };
        let started = self.started_at.lock().unwrap().unwrap_or_else(Instant::now);
        let deadline = self.info.boot_deadline(started);
        let tic = Instant::now();
        if let Some(agent) = agent {
            let mut agent = agent.lock().unwrap();
            let hello = self.agent_handshake(&mut **agent, &setup, deadline)?;
            self.log(&format!(
                "connected to the guest agent ({} {}, protocol {}) over {}",
                hello.agent,
                hello.version,
                hello.protocol,
                agent.describe()
            ));
        } else {
            self.handshake(&mut **connector.lock().unwrap(), &setup, deadline)?;
            self.log(setup.connected_line);
        }
        self.log(&format!(
            "(connecting took {:.2} seconds)",
            tic.elapsed().as_secs_f64()
        ));
        block.finish();
        self.save_boot()
    }

    /// Gets a stream when there is none (or each time, for a connector that reconnects) and
    /// waits for the handshake on it.
    fn handshake(
        &self,
        connector: &mut dyn Connector,
        setup: &ShellSetup,
        deadline: Deadline,
    ) -> Result<()> {
        let mut last_note = Instant::now();
        let mut on_idle = || {
            if let Some(hint) = setup.idle_hint {
                if last_note.elapsed() >= IDLE_NOTE_EVERY {
                    last_note = Instant::now();
                    self.log("Guest root shell did not produce any data yet...");
                    self.log(hint);
                }
            }
            !deadline.expired()
        };
        loop {
            let fresh = !self.shell.has_shell() || connector.reconnects();
            if fresh {
                let stream = connector
                    .connect(deadline)
                    .map_err(|e| connect_error(&self.info, self.kind(), &self.console, e))?;
                self.shell.set(new_shell(stream, setup));
                if let Some(greeting) = &setup.greeting {
                    self.shell
                        .send_raw(&self.info, &self.console, greeting.as_bytes())?;
                }
            }
            match self.shell.handshake(deadline, &mut on_idle) {
                Ok(()) => return Ok(()),
                Err(ShellError::Disconnected)
                    if fresh && connector.reconnects() && !deadline.expired() =>
                {
                    // Too early (a container still setting up its namespaces): again.
                    connector.abandon();
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Err(e) => {
                    if fresh {
                        connector.abandon();
                    }
                    return Err(handshake_error(
                        &self.info,
                        &self.console,
                        Via::Backdoor,
                        e,
                        &|| self.exit_note(),
                    ));
                }
            }
        }
    }

    /// After a reboot was asked for: an agent whose connector does not survive the guest's
    /// reset is given up for the rest of this launch, and the backdoor takes over. What the
    /// backdoor's stream still holds from the old boot (unread while the agent ran, its
    /// handshake line among it) is dropped first, so the next handshake is the new boot's.
    pub(super) fn leave_agent_after_reset(&self) {
        let (connector, setup) = {
            let mut run = self.run.lock().unwrap();
            let Some(r) = run.as_mut() else { return };
            match &r.agent {
                Some(agent) if !agent.lock().unwrap().survives_guest_reset() => {}
                _ => return,
            }
            r.agent = None;
            (r.connector.clone(), r.setup.clone())
        };
        self.shell.drop_agent();
        self.log(
            "the vsock device does not survive the guest's reset (vhost-device-vsock): \
             the backdoor runs the commands until the machine starts again",
        );
        if !self.shell.has_shell() {
            let deadline = Deadline::after(Some(AGENT_CONNECT_SLICE));
            if let Ok(stream) = connector.lock().unwrap().connect(deadline) {
                self.shell.set(new_shell(stream, &setup));
            }
        }
        self.shell.discard_pending(STALE_OUTPUT_QUIET);
    }

    /// Connects to the guest's agent (a new connection each time) and waits for its HELLO.
    fn agent_handshake(
        &self,
        connector: &mut dyn Connector,
        setup: &ShellSetup,
        deadline: Deadline,
    ) -> Result<agent_protocol::Hello> {
        let mut last_note = Instant::now();
        let mut on_idle = || {
            if last_note.elapsed() >= IDLE_NOTE_EVERY {
                last_note = Instant::now();
                self.log("The guest's agent did not say hello yet...");
            }
            !deadline.expired()
        };
        let mut hello_wait = HELLO_WAIT_FIRST;
        loop {
            let stream = self.agent_stream(connector, deadline, &mut on_idle)?;
            self.shell
                .set_agent(Agent::new(stream).with_preamble(setup.preamble));
            let this_try = if connector.reconnects() {
                deadline.min(Deadline::after(Some(hello_wait)))
            } else {
                deadline
            };
            let mut on_idle_this_try = || on_idle() && !this_try.expired();
            match self.shell.agent_handshake(this_try, &mut on_idle_this_try) {
                Ok(hello) if self.shell.from_ended_boot(&hello) => {
                    // Asked to reboot, the guest still runs its old boot: again, later.
                    self.shell.drop_agent();
                    connector.abandon();
                    if deadline.expired() {
                        return Err(handshake_error(
                            &self.info,
                            &self.console,
                            Via::Agent,
                            ShellError::TimedOut,
                            &|| self.exit_note(),
                        ));
                    }
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Ok(hello) => {
                    self.shell.record_boot(&hello);
                    return Ok(hello);
                }
                Err(ShellError::TimedOut) if this_try.expired() && !deadline.expired() => {
                    // connected, yet no HELLO: a lost connection (see HELLO_WAIT_FIRST)
                    self.shell.drop_agent();
                    connector.abandon();
                    hello_wait = (hello_wait * 2).min(HELLO_WAIT_MAX);
                }
                Err(ShellError::Disconnected) if connector.reconnects() && !deadline.expired() => {
                    // The port answered before the agent was ready: again.
                    connector.abandon();
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Err(e) => {
                    connector.abandon();
                    self.shell.drop_agent();
                    return Err(handshake_error(
                        &self.info,
                        &self.console,
                        Via::Agent,
                        e,
                        &|| self.exit_note(),
                    ));
                }
            }
        }
    }

    /// A connection to the agent's port, tried in slices so that a machine that stops
    /// meanwhile ends the wait (a connector knows nothing of the machine's process).
    fn agent_stream(
        &self,
        connector: &mut dyn Connector,
        deadline: Deadline,
        on_idle: &mut dyn FnMut() -> bool,
    ) -> Result<crate::transport::stream::Stream> {
        let mut refused = None;
        loop {
            let slice = deadline.min(Deadline::after(Some(AGENT_CONNECT_SLICE)));
            match connector.connect(slice) {
                Ok(stream) => return Ok(stream),
                Err(ConnectError::Refused(answer)) => refused = Some(answer),
                Err(ConnectError::TimedOut) => {}
                Err(e) => {
                    return Err(agent_connect_error(
                        &self.info,
                        self.kind(),
                        &self.console,
                        e,
                    ))
                }
            }
            let exited = self
                .run
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|r| !r.process.is_running());
            if exited {
                return Err(handshake_error(
                    &self.info,
                    &self.console,
                    Via::Agent,
                    ShellError::Disconnected,
                    &|| self.exit_note(),
                ));
            }
            if deadline.expired() || !on_idle() {
                let last = match refused {
                    Some(answer) => ConnectError::Refused(answer),
                    None => ConnectError::TimedOut,
                };
                return Err(agent_connect_error(
                    &self.info,
                    self.kind(),
                    &self.console,
                    last,
                ));
            }
        }
    }

    /// After the guest was rewound in place: the backdoor shell reads up to a marker; the
    /// agent gets a new connection and HELLO (the old one belongs to the guest's past).
    pub(crate) fn resync_session(&self, deadline: Deadline) -> Result<()> {
        let agent = self
            .run
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|r| r.agent.clone().map(|a| (a, r.setup.clone())));
        match agent {
            Some((agent, setup)) => {
                self.shell.drop_agent();
                let mut agent = agent.lock().unwrap();
                self.agent_handshake(&mut **agent, &setup, deadline)
                    .map(drop)
            }
            None => self.shell.resync(&self.info, &self.console, deadline),
        }
    }

    /// Describes how the machine's process ended, waiting briefly for it to do so (and for
    /// its console to close, so that an error built next has the console's last lines).
    pub(crate) fn exit_note(&self) -> String {
        let process = self.run.lock().unwrap().as_ref().map(|r| r.process.clone());
        match process.and_then(|p| p.wait(Deadline::after(Some(EXIT_NOTE_WAIT)))) {
            Some(status) => {
                let _ = self
                    .console
                    .wait_closed(Deadline::after(Some(CONSOLE_CLOSE_WAIT)));
                format!(
                    " ({} {})",
                    self.kind().backend_name(),
                    crate::process::describe_exit(status)
                )
            }
            None => String::new(),
        }
    }

    /// Runs one command on the shell, without hook or connect (see [`Machine::execute`]).
    pub(crate) fn shell_execute(
        &self,
        command: &str,
        timeout: Option<Duration>,
        reply: Reply,
        deadline: Deadline,
    ) -> Result<(i32, Vec<u8>)> {
        if !self.booted() {
            self.shell.disconnect();
            return Err(guest_error(
                &self.info,
                &self.console,
                format!(
                    "cannot run `{command}`: the {} stopped{}",
                    self.kind().noun(),
                    self.exit_note()
                ),
            ));
        }
        self.check_vlans(&format!("run `{command}`"))?;
        self.shell.execute(
            &self.info,
            &self.console,
            command,
            timeout,
            reply,
            deadline,
            &|| self.exit_note(),
        )
    }

    /// Fails when a VLAN switch the machine is plugged into died (see `crate::vlan`): its
    /// commands and network operations would otherwise wait for frames nobody carries.
    pub(crate) fn check_vlans(&self, what: &str) -> Result<()> {
        let pid = self.process().map(|p| p.pid());
        match crate::vlan::dead_switch_error(self.name(), &self.info.env, pid, what) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Asks the guest to power off and waits for it.
    pub fn shutdown(&self) -> Result<()> {
        if !self.booted() {
            return Ok(());
        }
        match self.backend.power_off() {
            // the agent runs the bytes as a command, not waited for
            PowerOff::Raw(bytes) if self.shell.has_agent() && self.connected() => {
                let command = String::from_utf8_lossy(bytes).trim().to_string();
                self.shell_execute(&command, None, Reply::Nothing, Deadline::NEVER)?;
            }
            PowerOff::Raw(bytes) => self.shell.send_raw(&self.info, &self.console, bytes)?,
            PowerOff::Command(command, _) if self.connected() => {
                self.shell_execute(command, None, Reply::Nothing, Deadline::NEVER)?;
            }
            PowerOff::Command(_, signal) => {
                let by_vmm = match self.backend.power() {
                    Some(power) => power.power_off_vmm(&self.info)?,
                    None => false,
                };
                if !by_vmm {
                    if let Some(p) = self.process() {
                        p.signal_group(signal);
                    }
                }
            }
        }
        self.wait_for_shutdown()
    }

    /// Waits until the machine's process has exited, then cleans up after it.
    pub fn wait_for_shutdown(&self) -> Result<()> {
        let Some(process) = self.run.lock().unwrap().as_ref().map(|r| r.process.clone()) else {
            return Ok(());
        };
        let noun = self.kind().noun();
        let block = self.nested(&format!("waiting for the {noun} to power off"));
        while process.wait(Deadline::NEVER).is_none() {
            interrupt::check()?;
        }
        self.clear(false);
        block.finish();
        Ok(())
    }

    /// Kills the machine and frees everything it holds.
    pub fn release(&self) {
        let Some(process) = self.run.lock().unwrap().as_ref().map(|r| r.process.clone()) else {
            return;
        };
        self.info.logger.log(
            &format!(
                "kill {} (pid {})",
                self.kind().python_class(),
                process.pid()
            ),
            None,
        );
        self.backend.kill(self, &process);
        self.clear(true);
    }

    /// Forgets the running launch after it ended or was killed.
    fn clear(&self, released: bool) {
        self.backend.stopped(released);
        self.shell.clear();
        let run = self.run.lock().unwrap().take();
        if let Some(mut run) = run {
            if self.kind().keeps_last_process() {
                *self.last_process.lock().unwrap() = Some(run.process.clone());
            }
            // Whatever is left of the process group may hold the console open.
            run.process.kill();
            if let Some(reader) = run.console_reader.take() {
                let _ = reader.join();
            }
        }
    }
}

/// A shell on `stream`, driven as `setup` says.
fn new_shell(stream: crate::transport::stream::Stream, setup: &ShellSetup) -> Shell {
    let shell = Shell::new(stream)
        .with_preamble(setup.preamble)
        .with_pace_chunk(setup.pace_chunk);
    if setup.raw_output {
        shell.with_raw_output()
    } else {
        shell
    }
}

impl Host for Machine {
    fn info(&self) -> &MachineInfo {
        &self.info
    }

    fn console(&self) -> &Arc<Console> {
        &self.console
    }

    fn process(&self) -> Option<Arc<ChildProcess>> {
        self.run.lock().unwrap().as_ref().map(|r| r.process.clone())
    }

    fn adopt(&self, launched: Launched) {
        let old = self.run.lock().unwrap().take();
        self.shell.clear();
        if let Some(mut old) = old {
            self.backend.kill(self, &old.process);
            if let Some(reader) = old.console_reader.take() {
                let _ = reader.join();
            }
        }
        self.console.reopen();
        if let Err(e) = self.install(launched) {
            // Only a ready connector can fail here, which a launch handed over never does.
            self.log(&format!(
                "the new launch's shell could not be installed: {e}"
            ));
        }
    }

    fn guest_error(&self, message: String) -> Error {
        guest_error(&self.info, &self.console, message)
    }
}
