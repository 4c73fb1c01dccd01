//! What every backend driving a VMM through its API keeps and does, whatever the VMM: where
//! the machine's configuration comes from (a start script, or given inline by `--config`),
//! which binary runs, the running process, the VLAN NICs, and starting one process
//! (`launch.rs`) and remembering it. A backend holds a [`VmmCore`] and adds only what its VMM
//! does differently (the command line, the calls).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Host, Launched, MachineInfo};
use crate::error::{Error, Result};
use crate::vmm::api::{Api, Call, FaultReader};
use crate::vmm::launch::{self, Binary, Running, VmmCommand, SOCKET_TIMEOUT};
use crate::vmm::nics::VlanNics;
use crate::vmm::{Vmm, VmmSpec};

/// Where a VMM machine's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The start script `run-<name>-<vmm>` prints it at each launch.
    Script(String),
    /// `--config` gave it (checked when the file was read).
    Inline(VmmSpec),
}

/// The state a VMM backend shares with every other.
pub struct VmmCore {
    vmm: Vmm,
    source: Source,
    binary: Binary,
    socket_timeout: Duration,
    running: Mutex<Option<Arc<Running>>>,
    /// The machine's VLAN NICs.
    pub nics: VlanNics,
}

impl VmmCore {
    /// A machine of `vmm` configured by `source`.
    pub fn new(vmm: Vmm, source: Source) -> Self {
        let source = match source {
            Source::Script(command) => Source::Script(launch::absolute_start_command(command)),
            inline => inline,
        };
        VmmCore {
            vmm,
            source,
            binary: Binary::Lookup,
            socket_timeout: SOCKET_TIMEOUT,
            running: Mutex::new(None),
            nics: VlanNics::default(),
        }
    }

    /// The start script, or `""` for a machine configured inline.
    pub fn start_command(&self) -> &str {
        match &self.source {
            Source::Script(command) => command,
            Source::Inline(_) => "",
        }
    }

    /// The configuration for a fresh launch: what the start script prints, or the inline one.
    pub fn spec(&self, info: &MachineInfo) -> Result<VmmSpec> {
        match &self.source {
            Source::Script(command) => launch::run_script(command, info),
            Source::Inline(spec) => Ok(spec.clone()),
        }
    }

    /// The running VMM, or an error naming the machine.
    pub fn running(&self, info: &MachineInfo) -> Result<Arc<Running>> {
        self.running
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::InvalidState {
                machine: info.name.clone(),
                message: "the machine is not running (call start() first)".to_string(),
            })
    }

    /// Forgets the running VMM, handing it over (to be killed before a restore).
    pub fn take_running(&self) -> Option<Arc<Running>> {
        self.running.lock().unwrap().take()
    }

    /// Ends the running VMM, if any (before a restore starts a new one).
    pub fn kill_running(&self) {
        if let Some(old) = self.take_running() {
            old.process.kill();
        }
    }

    /// Kills the VMM: the guest stops as at a power cut.
    pub fn crash(&self, info: &MachineInfo) -> Result<()> {
        self.running(info)?.process.signal_group(libc::SIGKILL);
        Ok(())
    }

    /// Pauses the guest with `call`.
    pub fn pause(&self, info: &MachineInfo, call: &Call) -> Result<()> {
        let running = self.running(info)?;
        running.send(call)?;
        running.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Resumes a paused guest with `call` (a restored one runs already).
    pub fn resume(&self, info: &MachineInfo, call: &Call) -> Result<()> {
        let running = self.running(info)?;
        if running.paused.load(Ordering::SeqCst) {
            running.send(call)?;
            running.paused.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Forgets the process; a released machine's TAPs go too.
    pub fn stopped(&self, released: bool) {
        self.take_running();
        if released {
            self.nics.release();
        }
    }

    /// Starts the VMM binary with `args` (its API on `socket`, its error answers read by
    /// `fault`), lets `configure` bring up the guest, and remembers the running process.
    pub fn start(
        &self,
        host: &dyn Host,
        args: Vec<OsString>,
        socket: PathBuf,
        fault: FaultReader,
        configure: &dyn Fn(&Api) -> Result<()>,
    ) -> Result<Launched> {
        let binary = self.binary.resolve(self.vmm)?;
        let (launched, running) = launch::start(
            host,
            VmmCommand {
                vmm: self.vmm,
                binary,
                args,
                socket,
                socket_timeout: self.socket_timeout,
                netns: self.nics.netns(),
                fault,
                configure,
            },
        )?;
        *self.running.lock().unwrap() = Some(running);
        Ok(launched)
    }
}

/// A backend built on a [`VmmCore`]: the test hooks every such backend has.
pub trait VmmBackend: Sized {
    /// Its core.
    fn core_mut(&mut self) -> &mut VmmCore;

    /// Runs `binary` instead of the one the VMM's variable or PATH names, and waits
    /// `socket_timeout` for its API socket (tests).
    #[cfg(test)]
    fn with_binary(mut self, binary: PathBuf, socket_timeout: Duration) -> Self {
        let core = self.core_mut();
        core.binary = Binary::Fixed(binary);
        core.socket_timeout = socket_timeout;
        self
    }

    /// Looks for the binary on `path` only (tests).
    #[cfg(test)]
    fn with_search_path(mut self, path: &str) -> Self {
        self.core_mut().binary = Binary::Search(path.to_string());
        self
    }
}
