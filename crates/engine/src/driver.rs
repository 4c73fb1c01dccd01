//! The driver: owns the VLANs and machines of a run, the global timeout and cleanup.
//!
//! ```text
//! Driver::new: tmp dir → VLANs (vde_switch) → machine objects (nothing started)
//! script:      start_all / machine.start / execute ... (Python side)
//! end:         sync_all → cleanup (release machines, stop VLANs)
//! timeout:     timer thread → interrupt flag + SIGTERM to self → release all machines;
//!              the Python side cleans up, writes its reports and dies of SIGTERM
//! ```

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, MachineInfo, Snapshots};
use crate::config::{Config, MachineConfig, MachineKind};
use crate::error::{Error, Result};
use crate::interrupt::{self, Cancel, Reason};
use crate::log::Logger;
use crate::machine::snapshot::Support;
use crate::machine::{ExecOptions, Machine};
use crate::vlan::Vlan;
use crate::vmm::core::Source;

/// The driver of one run.
pub struct Driver {
    config: Config,
    logger: Arc<Logger>,
    tmp_dir: PathBuf,
    shared_dir: PathBuf,
    vlans: Mutex<Vec<Vlan>>,
    vlan_env: Vec<(String, String)>,
    machines: Vec<Arc<Machine>>,
    timer: Mutex<Option<Timer>>,
    partitions: crate::netem::Partitions,
}

/// Upstream's tmp dir: `$XDG_RUNTIME_DIR`, else Python's `tempfile.gettempdir()` order.
pub fn tmp_dir() -> Result<PathBuf> {
    let candidates = ["XDG_RUNTIME_DIR", "TMPDIR", "TEMP", "TMP"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain(["/tmp", "/var/tmp", "/usr/tmp"].iter().map(PathBuf::from));
    for dir in candidates {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        if dir.is_dir() && writable(&dir) {
            return Ok(dir);
        }
    }
    Err(Error::Config(
        "no writable directory in XDG_RUNTIME_DIR, TMPDIR, TEMP, TMP or /tmp".to_string(),
    ))
}

/// Containers need root, as upstream checks before anything starts.
fn require_root_for_containers(uid: u32, machines: &[MachineConfig]) -> Result<()> {
    if uid != 0 {
        if let Some(m) = machines.iter().find(|m| m.kind.needs_root()) {
            return Err(Error::Config(format!(
                "{} requires root to work. You are {uid}",
                m.kind.backend_name()
            )));
        }
    }
    Ok(())
}

fn writable(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: access(2) on a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

impl Driver {
    /// Creates the tmp dirs, starts the VLANs and builds (without starting) the machines.
    pub fn new(config: Config, logger: Arc<Logger>) -> Result<Driver> {
        // SAFETY: plain getter.
        require_root_for_containers(unsafe { libc::geteuid() }, &config.machines)?;
        let tmp_dir = match &config.worker {
            Some(worker) => {
                let dir = crate::config::worker_tmp_dir(&tmp_dir()?, worker);
                crate::private::dir(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                std::fs::create_dir_all(&config.out_dir)
                    .map_err(|e| Error::io(format!("creating {}", config.out_dir.display()), e))?;
                dir
            }
            None => tmp_dir()?,
        };
        let shared_dir = tmp_dir.join("shared-xchg");
        crate::private::dir(&shared_dir)
            .map_err(|e| Error::io(format!("creating {}", shared_dir.display()), e))?;

        let block = logger.nested("start all VLans", None);
        let mut vlans = Vec::new();
        let host_tap = config.machines.iter().any(|m| m.kind.wants_vlan_host_tap());
        for &nr in &config.vlans {
            let mut vlan = Vlan::start(nr, &tmp_dir, &logger)?;
            if host_tap {
                vlan.plug_host_tap(&logger);
            }
            vlans.push(vlan);
        }
        block.finish();
        let vlan_env = vlans
            .iter()
            .map(|v| {
                (
                    format!("QEMU_VDE_SOCKET_{}", v.nr()),
                    v.socket_dir().display().to_string(),
                )
            })
            .collect();

        let mut driver = Driver {
            config,
            logger,
            tmp_dir,
            shared_dir,
            vlans: Mutex::new(vlans),
            vlan_env,
            machines: Vec::new(),
            timer: Mutex::new(None),
            partitions: Default::default(),
        };
        let specs = driver.config.machines.clone();
        for spec in &specs {
            let m = driver.build_machine(spec, driver.config.keep_machine_state)?;
            driver.machines.push(Arc::new(m));
        }
        // Upstream sorts machines by name (containers share the numbering).
        driver.machines.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(driver)
    }

    fn build_machine(&self, spec: &MachineConfig, keep_state: bool) -> Result<Machine> {
        let info = MachineInfo {
            name: spec.name.clone(),
            logger: self.logger.clone(),
            state_dir: self.tmp_dir.join(format!("vm-state-{}", spec.name)),
            shared_dir: self.shared_dir.clone(),
            out_dir: self.config.out_dir.clone(),
            boot_timeout: self.config.boot_timeout,
            env: self.vlan_env.clone(),
            vnc: self.config.vnc,
            transport: self.config.transport,
            boot_cache: self.config.boot_cache.clone(),
            node: 1 + self
                .config
                .machines
                .iter()
                .filter(|m| m.name < spec.name)
                .count() as u32,
        };
        let script = spec.start_script.display().to_string();
        let vmm_source = || match &spec.inline {
            Some(inline) => Source::Inline(inline.clone()),
            None => Source::Script(script.clone()),
        };
        let backend: Box<dyn Backend> = match spec.kind {
            MachineKind::Qemu => Box::new(crate::qemu::QemuBackend::new(script)),
            MachineKind::Nspawn => Box::new(crate::nspawn::NspawnBackend::new(script)),
            MachineKind::Firecracker => Box::new(
                crate::firecracker::FirecrackerBackend::from_source(vmm_source()),
            ),
            MachineKind::CloudHypervisor => {
                Box::new(crate::cloud_hypervisor::CloudHypervisorBackend::from_source(vmm_source()))
            }
            #[cfg(test)]
            MachineKind::Fake => Box::new(crate::fake::FakeBackend::new(script)),
        };
        Machine::new(info, backend, keep_state)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The log.
    pub fn logger(&self) -> &Arc<Logger> {
        &self.logger
    }

    /// The machines, sorted by name.
    pub fn machines(&self) -> &[Arc<Machine>] {
        &self.machines
    }

    /// `(number, pid, socket dir)` of each VLAN.
    pub fn vlans(&self) -> Vec<(u32, u32, PathBuf)> {
        self.vlans
            .lock()
            .unwrap()
            .iter()
            .map(|v| (v.nr(), v.pid(), v.socket_dir().to_path_buf()))
            .collect()
    }

    /// The environment start scripts get for the VLANs (`QEMU_VDE_SOCKET_<n>`).
    pub fn vlan_env(&self) -> &[(String, String)] {
        &self.vlan_env
    }

    /// The driver's tmp dir.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// A machine that is not registered with the driver (upstream's `create_machine`):
    /// no polling conditions, not started by `start_all`, not released by cleanup.
    pub fn create_machine(
        &self,
        start_command: &str,
        name: Option<&str>,
        keep_state: bool,
    ) -> Result<Machine> {
        let name = name.map(str::to_string).unwrap_or_else(|| {
            crate::names::from_start_script_of(start_command.trim(), MachineKind::Qemu)
        });
        let spec = MachineConfig {
            name,
            start_script: PathBuf::from(start_command),
            kind: MachineKind::Qemu,
            inline: None,
        };
        self.build_machine(&spec, keep_state)
    }

    /// Partitions `vlan`: machines in different `groups` cannot exchange frames on it (see
    /// `netem::partition`); replaces an earlier partition of it.
    pub fn partition(&self, groups: &[Vec<Arc<Machine>>], vlan: i64) -> Result<()> {
        self.partitions
            .partition(&self.logger, groups, vlan, &self.machines)
    }

    /// Heals the partition of `vlan`, or of every VLAN (None), on the machines that are up.
    pub fn heal(&self, vlan: Option<i64>) -> Result<()> {
        self.partitions.heal(&self.logger, vlan, &self.machines)
    }

    /// Starts every machine, in parallel; reports every machine that failed.
    pub fn start_all(&self) -> Result<()> {
        let block = self.logger.nested("start all VMs", None);
        let parent = self.logger.current_span();
        let logger = &self.logger;
        let failures: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .machines
                .iter()
                .map(|m| {
                    s.spawn(move || {
                        logger.in_span(parent, || {
                            m.start(false).map_err(|e| format!("{}: {e}", m.name()))
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("panicked".to_string()))
                        .err()
                })
                .collect()
        });
        if failures.is_empty() {
            block.finish();
            Ok(())
        } else {
            interrupt::check()?;
            Err(Error::Guest {
                machine: "start_all".to_string(),
                message: format!(
                    "Failed to start the following machines:\n{}",
                    failures.join("\n")
                ),
                console_tail: Vec::new(),
            })
        }
    }

    /// Waits until every machine has stopped, then cancels the global timer.
    pub fn join_all(&self) -> Result<()> {
        let block = self.logger.nested("wait for all VMs to finish", None);
        for m in &self.machines {
            m.wait_for_shutdown()?;
        }
        self.cancel_timer();
        block.finish();
        Ok(())
    }

    /// Runs `sync` on every machine that is up (the end of upstream's `run_tests`).
    pub fn sync_all(&self) -> Result<()> {
        for m in &self.machines {
            if m.is_up() {
                m.execute("sync", ExecOptions::default())?;
            }
        }
        Ok(())
    }

    /// Starts the global timer: when it fires, [`terminate`] ends the run as upstream's
    /// `terminate_test` (machines killed, SIGTERM to the process). Started once; later calls
    /// do nothing.
    pub fn start_timer(&self) {
        let mut slot = self.timer.lock().unwrap();
        if slot.is_some() {
            return;
        }
        let timeout = self.config.global_timeout;
        self.logger.log(
            &format!(
                "Test will time out and terminate in {} seconds",
                fmt_secs(timeout)
            ),
            None,
        );
        let timer = Timer::default();
        *slot = Some(timer.clone());
        let machines = self.machines.clone();
        let logger = self.logger.clone();
        std::thread::Builder::new()
            .name("ntng-global-timer".into())
            .spawn(move || {
                let _done = timer.done_on_drop();
                if timer.cancel.wait(timeout) {
                    return;
                }
                let why = format!("global timeout of {} seconds reached", fmt_secs(timeout));
                terminate(&logger, &machines, Reason::GlobalTimeout, &why);
                // The driver cleans up and dies of SIGTERM itself (cleanup cancels this
                // timer). Should Python never get to run again, die here.
                if !timer.cancel.wait(LAST_RESORT) {
                    logger.warning("the driver did not end after the global timeout; killing it");
                    die_of_sigterm();
                }
            })
            .expect("cannot start the global timer thread");
    }

    /// Cancels the global timer.
    pub fn cancel_timer(&self) {
        if let Some(t) = self.timer.lock().unwrap().as_ref() {
            t.cancel.cancel();
        }
    }

    /// True from [`Driver::start_timer`] until the timer fired and ended, or was cancelled
    /// (`threading.Timer.is_alive()` of upstream's `race_timer`).
    pub fn timer_alive(&self) -> bool {
        self.timer
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|t| !t.done.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Upstream's `terminate_test()` called by the script: ends the run now, as the global
    /// timeout would, reported as a SIGTERM.
    pub fn terminate_test(&self) {
        terminate(
            &self.logger,
            &self.machines,
            Reason::Terminate,
            "terminate_test() called by the test script",
        );
    }

    /// Writes the HTML report of the run to `path`, with every machine's console log.
    pub fn write_html_report(
        &self,
        path: &Path,
        reports: &crate::reporters::Reports,
    ) -> Result<()> {
        let consoles: Vec<(String, String)> = self
            .machines
            .iter()
            .map(|m| {
                let (tail, omitted) = m.console().text_tail(REPORT_CONSOLE_BYTES);
                let text = if omitted == 0 {
                    tail
                } else {
                    format!(
                        "[{omitted} earlier lines left out; the whole log is console.log in \
                         the machine's state directory]\n{tail}"
                    )
                };
                (m.name().to_string(), text)
            })
            .collect();
        let title = match &self.config.test_script {
            Some(s) => format!("nixos-test-ng: {}", s.display()),
            None => "nixos-test-ng".to_string(),
        };
        reports
            .write_html_report(&self.logger, path, &title, &consoles)
            .map_err(|e| Error::io(format!("writing the HTML report {}", path.display()), e))
    }

    /// Releases every machine and stops every VLAN (upstream's "cleanup" block).
    pub fn cleanup(&self) {
        let block = self.logger.nested("cleanup", None);
        self.cancel_timer();
        for m in &self.machines {
            m.release();
        }
        for v in self.vlans.lock().unwrap().drain(..) {
            self.logger
                .log(&format!("kill vlan (pid {})", v.pid()), None);
            v.stop();
        }
        block.finish();
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

/// The most of each machine's console log the HTML report embeds (its end): a flooded
/// console must not make a report of gigabytes.
const REPORT_CONSOLE_BYTES: usize = 4 << 20;

/// How long after the global timeout the timer waits for the driver to end by itself
/// (the script's exception unwinds, reports are written) before it kills the process.
const LAST_RESORT: Duration = Duration::from_secs(60);

/// The global timer's handle: cancel it, and whether its thread has ended.
#[derive(Clone, Default)]
struct Timer {
    cancel: Cancel,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Timer {
    fn done_on_drop(&self) -> impl Drop {
        struct Done(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Done(self.done.clone())
    }
}

/// Upstream's `terminate_test`: the block "timeout reached; test terminating...", every
/// machine killed, and SIGTERM to this process (the driver then cleans up, writes its
/// reports and dies of SIGTERM). `reason` stays set: every later engine call fails. `why`
/// is logged as a test error (it marks the running subtest failed in JUnit).
fn terminate(logger: &Logger, machines: &[Arc<Machine>], reason: Reason, why: &str) {
    let block = logger.nested("timeout reached; test terminating...", None);
    logger.test_error(why);
    interrupt::raise(reason);
    // The signal first: the script then ends with the timeout, not with the error of a
    // command whose machine was killed under it.
    // SAFETY: signalling our own process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
    for m in machines {
        m.release();
    }
    block.finish();
}

/// Ends the process by SIGTERM whatever handler is installed.
fn die_of_sigterm() -> ! {
    // SAFETY: resetting a disposition and signalling our own process.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
    // Delivery to another thread may take a moment; never return.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.cancel_timer();
        for m in &self.machines {
            m.release();
        }
    }
}

impl Driver {
    /// The running machines, each with how it takes snapshots (`Unsupported` for one that
    /// cannot: a consistent snapshot of all machines must not skip one).
    fn snapshot_supports(&self, operation: &str) -> Result<Vec<(&Arc<Machine>, Support<'_>)>> {
        self.machines
            .iter()
            .filter(|m| m.booted())
            .map(|m| Ok((m, m.snapshot_support(operation)?)))
            .collect()
    }

    /// Snapshots every running machine as `name`, consistently: the machines whose backend
    /// saves them are paused together while they are saved, so none runs ahead of another.
    pub fn snapshot_all(&self, name: &str) -> Result<()> {
        let block = self
            .logger
            .nested(&format!("taking snapshot {name} of all machines"), None);
        let running = self.snapshot_supports("snapshot_all")?;
        for (m, _) in &running {
            m.connect()?;
        }
        let saved_ones: Vec<(&Arc<Machine>, &dyn Snapshots)> = running
            .iter()
            .filter_map(|(m, s)| match s {
                Support::Saved(s) => Some((*m, *s)),
                Support::Restart => None,
            })
            .collect();
        let mut mounts = Vec::new();
        for (m, s) in &saved_ones {
            match m.unmount_for(*s, name) {
                Ok(ms) => mounts.push(ms),
                Err(e) => {
                    for ((m, _), ms) in saved_ones.iter().zip(&mounts) {
                        let _ = m.mount_shares(ms);
                    }
                    return Err(e);
                }
            }
        }
        let paused = saved_ones.iter().try_for_each(|(m, s)| s.pause(m.info()));
        let saved = paused.and_then(|()| {
            saved_ones
                .iter()
                .try_for_each(|(m, s)| s.save(m.info(), name))
        });
        let resumed = saved_ones.iter().try_for_each(|(m, s)| s.resume(m.info()));
        for ((m, _), ms) in saved_ones.iter().zip(&mounts) {
            m.mount_shares(ms)?;
        }
        saved?;
        resumed?;
        for ((m, _), ms) in saved_ones.iter().zip(mounts) {
            m.remember_snapshot(name, ms);
        }
        for (m, s) in &running {
            if let Support::Restart = s {
                m.remember_snapshot(name, Vec::new());
            }
        }
        block.finish();
        Ok(())
    }

    /// Restores every running machine to snapshot `name`; the machines whose backend rewinds
    /// them resume together, then the ones whose reset is a restart restart.
    pub fn restore_all(&self, name: &str) -> Result<()> {
        let block = self
            .logger
            .nested(&format!("restoring snapshot {name} of all machines"), None);
        let running = self.snapshot_supports("restore_all")?;
        let mut saved_ones = Vec::new();
        for (m, s) in &running {
            let mounts = m.snapshot_mounts(name)?;
            if let Support::Saved(s) = s {
                saved_ones.push((*m, *s, mounts));
            }
        }
        saved_ones
            .iter()
            .try_for_each(|(m, s, _)| s.pause(m.info()))?;
        let mut rewound = Vec::new();
        for (m, s, mounts) in &saved_ones {
            rewound.push(s.rewind(m.as_ref(), name, mounts)?);
        }
        saved_ones
            .iter()
            .try_for_each(|(m, s, _)| s.resume(m.info()))?;
        for ((m, s, mounts), how) in saved_ones.iter().zip(rewound) {
            m.after_restore(*s, name, how, mounts)?;
        }
        for (m, s) in &running {
            if let Support::Restart = s {
                m.restore(name)?;
            }
        }
        block.finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_need_root() {
        let vm = MachineConfig {
            name: "a".into(),
            start_script: "run-a-vm".into(),
            kind: MachineKind::Qemu,
            inline: None,
        };
        let container = MachineConfig {
            kind: MachineKind::Nspawn,
            ..vm.clone()
        };
        assert!(require_root_for_containers(1000, std::slice::from_ref(&vm)).is_ok());
        assert!(require_root_for_containers(0, std::slice::from_ref(&container)).is_ok());
        let e = require_root_for_containers(1000, &[vm, container]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "systemd-nspawn requires root to work. You are 1000"
        );
    }

    #[test]
    fn each_worker_has_its_own_tmp_dir_state_dirs_and_output_directory() {
        let base = std::env::temp_dir().join(format!("ntng-driver-workers-{}", std::process::id()));
        let config = Config {
            machines: vec![MachineConfig {
                name: "m".into(),
                start_script: "run-m-vm".into(),
                kind: MachineKind::Fake,
                inline: None,
            }],
            out_dir: base.join("out"),
            ..Config::default()
        };
        // unique worker names: the tmp dir is the host's, shared with other test runs
        let names = [0, 1].map(|i| format!("t{}-{i}", std::process::id()));
        let drivers = names.clone().map(|w| {
            let cfg = config.clone().for_worker(&w).unwrap();
            Driver::new(cfg, Arc::new(Logger::default())).unwrap()
        });
        for (driver, worker) in drivers.iter().zip(&names) {
            let tmp = driver.tmp_dir();
            assert_eq!(
                tmp,
                crate::config::worker_tmp_dir(&tmp_dir().unwrap(), worker)
            );
            let info = driver.machines()[0].info();
            assert_eq!(info.state_dir, tmp.join("vm-state-m"));
            assert_eq!(info.shared_dir, tmp.join("shared-xchg"));
            assert_eq!(info.out_dir, base.join("out").join(worker));
            assert!(info.out_dir.is_dir() && info.shared_dir.is_dir());
        }
        assert_ne!(drivers[0].tmp_dir(), drivers[1].tmp_dir());
        for driver in &drivers {
            std::fs::remove_dir_all(driver.tmp_dir()).unwrap();
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
