//! One validated description of a run, built from the command line, the environment
//! defaults of upstream generations A/B and generation C's `--config` JSON.

mod cli;
mod json;
mod reporting;
mod transport;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use cli::{parse_args, Parsed, USAGE_EXIT_CODE};
pub use reporting::{OtlpSettings, Reporting};
pub use transport::{Transport, TRANSPORT_VAR};
pub use worker::{worker_file, worker_tmp_dir};

pub use crate::kind::MachineKind;

/// One machine of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// The machine's name (not yet pythonized).
    pub name: String,
    /// The start script.
    pub start_script: PathBuf,
    /// VM, container or microVM.
    pub kind: MachineKind,
    /// The VMM configuration `--config` gave inline: a Firecracker or Cloud Hypervisor
    /// machine without a start script (`start_script` is then empty).
    pub inline: Option<crate::vmm::VmmSpec>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Machines, in the order given.
    pub machines: Vec<MachineConfig>,
    /// VLAN numbers, deduplicated and sorted (see [`dedup_vlans`]).
    pub vlans: Vec<u32>,
    /// Limit for the whole test.
    pub global_timeout: Duration,
    /// Limit for a machine to print the backdoor handshake after its start.
    pub boot_timeout: Option<Duration>,
    /// Where screenshots, copied files and reports go.
    pub out_dir: PathBuf,
    /// Reuse state directories from a previous run.
    pub keep_machine_state: bool,
    /// Open a REPL instead of running the script.
    pub interactive: bool,
    /// Show each VM's display over VNC on 127.0.0.1 (`--vnc`; new).
    pub vnc: bool,
    /// Go on after a failed subtest (`--keep-going`; new).
    pub keep_going: bool,
    /// No name check of the script before booting (`--skip-check`; new).
    pub skip_check: bool,
    /// Arguments after the test script, for pytest (pytest-style scripts only).
    pub pytest_args: Vec<String>,
    /// JUnit XML file, relative to `out_dir`.
    pub junit_xml: Option<PathBuf>,
    /// HTML report file (`--html-report`, or `report.html` in an explicit `-o` directory).
    pub html_report: Option<PathBuf>,
    /// The test script.
    pub test_script: Option<PathBuf>,
    /// `--debug-hook-attach` command.
    pub debug_hook_attach: Option<String>,
    /// `--dump-vsocks` offset.
    pub dump_vsocks: Option<u32>,
    /// Generation C's `enable_ssh_backdoor`.
    pub enable_ssh_backdoor: bool,
    /// `--log-level`.
    pub log_level: LogLevel,
    /// Warnings found while building the config (deprecated flags, unknown keys).
    pub warnings: Vec<String>,
    /// The XML log, the OTLP exporter and the trace parent (`LOGFILE`, `OTEL_*`,
    /// `TRACEPARENT`).
    pub reporting: Reporting,
    /// Which transport commands take (`NIXOS_TEST_NG_TRANSPORT`).
    pub transport: Transport,
    /// The worker this driver is, of several running the same machines at once
    /// ([`Config::for_worker`]); `None` for a run of its own.
    pub worker: Option<String>,
    /// `--reuse-boots` (new).
    pub reuse_boots: bool,
    /// The boot cache, when it is on (`--reuse-boots` or `NIXOS_TEST_NG_BOOT_CACHE`).
    pub boot_cache: Option<crate::qemu::boot_cache::Store>,
}

/// Generation C's log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// The default.
    Info,
    /// Warnings and errors.
    Warning,
    /// Errors only.
    Error,
}

/// Deduplicates VLAN numbers as upstream does (`list(set(vlans))`), in ascending order.
///
/// Upstream's order is a Python set's: for the strings its argparse hands over (the flag and
/// the `vlans` variable have no `type=int`) it changes from run to run with Python's hash
/// randomisation; for ints (generation C's JSON) it is the hash table's slot order, which is
/// ascending unless two numbers share a slot (`{1, 8}` iterates as `[8, 1]`). Ascending is
/// the stable order that agrees with upstream in the common case (`--vlans 2 1 2` → `[1, 2]`).
pub fn dedup_vlans(vlans: &mut Vec<u32>) {
    vlans.sort_unstable();
    vlans.dedup();
}

/// Upstream's default when neither the flag nor `globalTimeout` is set: 7 days.
pub const DEFAULT_GLOBAL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default limit for a boot to reach the handshake.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Upstream's default limit for a command, a wait or a retry (`timeout=900`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

impl Config {
    /// Applies what the environment decides whatever the command line says: the reporting
    /// (`LOGFILE`, `OTEL_*`, `TRACEPARENT`), the transport (`NIXOS_TEST_NG_TRANSPORT`) and the
    /// boot cache (`NIXOS_TEST_NG_BOOT_CACHE`, `NIXOS_TEST_NG_BOOT_CACHE_SIZE`, with
    /// `--reuse-boots`).
    pub fn apply_env(
        &mut self,
        env: &std::collections::HashMap<String, String>,
    ) -> crate::error::Result<()> {
        self.reporting = Reporting::from_env(env);
        self.transport = Transport::from_env(env)?;
        self.boot_cache = crate::qemu::boot_cache::settings(self.reuse_boots, env)?;
        Ok(())
    }
}

/// The run that generation C's `--config FILE` alone describes, on the defaults: how
/// `nixos-test-ng check` and `stubs` read a test's machines and VLANs as the driver does.
pub fn from_json_file(path: &std::path::Path) -> crate::error::Result<Config> {
    let mut cfg = Config::default();
    json::apply_file(path, &mut cfg)?;
    Ok(cfg)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            machines: Vec::new(),
            vlans: Vec::new(),
            global_timeout: DEFAULT_GLOBAL_TIMEOUT,
            boot_timeout: Some(DEFAULT_BOOT_TIMEOUT),
            out_dir: PathBuf::from("."),
            keep_machine_state: false,
            interactive: false,
            vnc: false,
            keep_going: false,
            skip_check: false,
            pytest_args: Vec::new(),
            junit_xml: None,
            html_report: None,
            test_script: None,
            debug_hook_attach: None,
            dump_vsocks: None,
            enable_ssh_backdoor: false,
            log_level: LogLevel::Info,
            warnings: Vec::new(),
            reporting: Reporting::default(),
            transport: Transport::Auto,
            worker: None,
            reuse_boots: false,
            boot_cache: None,
        }
    }
}

#[cfg(test)]
mod properties;
