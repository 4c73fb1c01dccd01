//! VLANs: one `vde_switch` per VLAN number; machines attach through its socket directory.
//!
//! The driver owns each switch: a watcher thread notices a switch that dies mid-run (killed,
//! crashed), logs it at once and records it in [`DEAD`]; from then on the network use of a
//! machine attached to that VLAN fails with an error naming it ([`dead_switch_error`])
//! instead of waiting for frames that no switch carries any more.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::log::Logger;
use crate::process::{self, ChildProcess};

/// A running VLAN.
pub struct Vlan {
    nr: u32,
    socket_dir: PathBuf,
    switch: Arc<ChildProcess>,
    host_tap: Option<ChildProcess>,
    /// Set before the driver stops the switch: its end is then no death.
    stopping: Arc<AtomicBool>,
}

/// A switch that died while its VLAN was in use.
struct Death {
    socket_dir: PathBuf,
    message: String,
}

/// The switches that died, of every driver in this process (told apart by socket directory,
/// which is unique per run); an entry goes when its VLAN is stopped.
static DEAD: Mutex<Vec<Death>> = Mutex::new(Vec::new());

/// Watches `switch` until it exits; an exit the driver did not ask for is logged and recorded.
fn watch(
    nr: u32,
    socket_dir: PathBuf,
    switch: Arc<ChildProcess>,
    stopping: Arc<AtomicBool>,
    logger: Arc<Logger>,
) {
    let log = logger.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("ntng-vlan{nr}"))
        .spawn(move || {
            let status = switch.wait_exit();
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let message = format!(
                "vlan{nr}: vde_switch (pid {}) died: {}",
                switch.pid(),
                process::describe_exit(status)
            );
            DEAD.lock().unwrap().push(Death {
                socket_dir,
                message: message.clone(),
            });
            log.log(&message, None);
        });
    if let Err(e) = spawned {
        logger.log(
            &format!("warning: vlan {nr}: cannot watch vde_switch: {e}"),
            None,
        );
    }
}

/// The error for a network use of the machine `machine` while a switch it is attached to is
/// dead: `env` is the machine's `QEMU_VDE_SOCKET_<n>` environment (its driver's VLANs), `root`
/// the pid of its process (its process tree names the socket directories it plugs into).
/// `None` in the common case, without looking at any process, when no switch died.
pub fn dead_switch_error(
    machine: &str,
    env: &[(String, String)],
    root: Option<u32>,
    what: &str,
) -> Option<Error> {
    let dead = DEAD.lock().unwrap();
    let ours: Vec<&Death> = dead
        .iter()
        .filter(|d| {
            env.iter()
                .any(|(k, v)| k.starts_with("QEMU_VDE_SOCKET_") && Path::new(v) == d.socket_dir)
        })
        .collect();
    if ours.is_empty() {
        return None;
    }
    let cmdlines = root.map(tree_cmdlines).unwrap_or_default();
    let death = ours.into_iter().find(|d| {
        let dir = d.socket_dir.as_os_str().as_encoded_bytes();
        cmdlines
            .iter()
            .any(|c| c.windows(dir.len()).any(|w| w == dir))
    })?;
    Some(Error::InvalidState {
        machine: machine.to_string(),
        message: format!(
            "cannot {what}: the machine's VLAN has no switch any more ({})",
            death.message
        ),
    })
}

/// The command lines of `root` and its descendants.
fn tree_cmdlines(root: u32) -> Vec<Vec<u8>> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold anything, so split after its last ')'
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree.iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .collect()
}

impl Vlan {
    /// Starts `vde_switch --sock <tmp>/vde<nr>.ctl --dirmode 0700 --hub` and waits for its
    /// control socket.
    pub fn start(nr: u32, tmp_dir: &Path, logger: &Arc<Logger>) -> Result<Vlan> {
        let socket_dir = tmp_dir.join(format!("vde{nr}.ctl"));
        let _ = std::fs::remove_dir_all(&socket_dir);
        // Ours before vde_switch uses it: it would put its ctl socket in anyone's directory.
        crate::private::dir(&socket_dir)
            .map_err(|e| Error::io(format!("vlan {nr}: creating {}", socket_dir.display()), e))?;
        let mut cmd = Command::new("vde_switch");
        cmd.arg("--sock")
            .arg(&socket_dir)
            .args(["--dirmode", "0700", "--hub"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let switch = Arc::new(process::spawn(cmd).map_err(|e| {
            Error::Config(format!(
                "cannot start `vde_switch` for vlan {nr}: {e} (is vde2 installed?)"
            ))
        })?);
        let deadline = Deadline::after(Some(Duration::from_secs(10)));
        while !socket_dir.join("ctl").exists() {
            if let Some(status) = switch.exit_status() {
                return Err(Error::Config(format!(
                    "`vde_switch` for vlan {nr} exited ({status}) before creating {}",
                    socket_dir.display()
                )));
            }
            if deadline.expired() {
                return Err(Error::Config(format!(
                    "`vde_switch` for vlan {nr} did not create {} within 10 s",
                    socket_dir.join("ctl").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        logger.log(
            &format!(
                "running vlan (pid {}; ctl {})",
                switch.pid(),
                socket_dir.display()
            ),
            None,
        );
        let stopping = Arc::new(AtomicBool::new(false));
        watch(
            nr,
            socket_dir.clone(),
            switch.clone(),
            stopping.clone(),
            logger.clone(),
        );
        Ok(Vlan {
            nr,
            socket_dir,
            switch,
            host_tap: None,
            stopping,
        })
    }

    /// Plugs a tap `vde-tap<nr>` in the driver's network namespace into the switch, as
    /// upstream's driver does when containers take part: nixpkgs' container scripts bridge
    /// their veths with it. (Ours do not need it: they plug into the switch from inside the
    /// container.) Needs root; a failure is logged, not fatal.
    pub fn plug_host_tap(&mut self, logger: &Arc<Logger>) {
        let name = format!("vde-tap{}", self.nr);
        let mut cmd = Command::new("vde_plug2tap");
        cmd.arg("-s")
            .arg(&self.socket_dir)
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let plug = match process::spawn(cmd) {
            Ok(plug) => plug,
            Err(e) => {
                logger.log(
                    &format!("warning: cannot start `vde_plug2tap` for {name}: {e}"),
                    None,
                );
                return;
            }
        };
        let deadline = Deadline::after(Some(Duration::from_secs(2)));
        while !Path::new("/sys/class/net").join(&name).exists() {
            if let Some(status) = plug.exit_status() {
                logger.log(
                    &format!("warning: `vde_plug2tap` for {name} exited ({status})"),
                    None,
                );
                return;
            }
            if deadline.expired() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        logger.log(
            &format!("plugged {name} into vlan {} (pid {})", self.nr, plug.pid()),
            None,
        );
        self.host_tap = Some(plug);
    }

    /// The VLAN number.
    pub fn nr(&self) -> u32 {
        self.nr
    }

    /// The switch's socket directory (`QEMU_VDE_SOCKET_<nr>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The switch's pid.
    pub fn pid(&self) -> u32 {
        self.switch.pid()
    }

    /// Stops the switch (closing its stdin makes it exit; the kill makes sure).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        DEAD.lock()
            .unwrap()
            .retain(|d| d.socket_dir != self.socket_dir);
        if let Some(plug) = &self.host_tap {
            plug.kill();
        }
        self.switch.close_stdin();
        self.switch.kill();
    }
}

impl Drop for Vlan {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Reporter};

    struct Lines(Arc<Mutex<Vec<String>>>);

    impl Reporter for Lines {
        fn event(&mut self, event: &Event<'_>) {
            if let Event::Line { msg, .. } = event {
                self.0.lock().unwrap().push(msg.to_string());
            }
        }
    }

    #[test]
    fn a_killed_switch_is_logged_and_fails_the_machines_plugged_into_it() {
        let tmp = std::env::temp_dir().join(format!("ntng-vlan-test-{}", std::process::id()));
        crate::private::dir(&tmp).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logger = Arc::new(Logger::default());
        logger.add_reporter(Box::new(Lines(lines.clone())));
        let vlan = Vlan::start(7, &tmp, &logger).unwrap();
        let env = vec![(
            "QEMU_VDE_SOCKET_7".to_string(),
            vlan.socket_dir().display().to_string(),
        )];
        // a stand-in for a machine whose command line names the switch's socket directory,
        // and one that does not
        let plugged = process::spawn({
            let mut c = Command::new("sh");
            c.args(["-c", "sleep 30"]).arg(vlan.socket_dir());
            c
        })
        .unwrap();
        let other = process::spawn({
            let mut c = Command::new("sh");
            c.args(["-c", "sleep 30"]);
            c
        })
        .unwrap();
        assert!(dead_switch_error("m", &env, Some(plugged.pid()), "x").is_none());

        let pid = vlan.pid();
        vlan.switch.signal_group(libc::SIGKILL);
        let expected = format!(
            "vlan7: vde_switch (pid {pid}) died: killed by signal 9 (SIGKILL), e.g. the OOM killer"
        );
        let deadline = Deadline::after(Some(Duration::from_secs(10)));
        while !lines.lock().unwrap().contains(&expected) {
            assert!(
                !deadline.expired(),
                "not logged: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let e = dead_switch_error("m", &env, Some(plugged.pid()), "run `true`").unwrap();
        assert_eq!(
            e.to_string(),
            format!("m: cannot run `true`: the machine's VLAN has no switch any more ({expected})")
        );
        assert!(dead_switch_error("m", &env, Some(other.pid()), "x").is_none());
        assert!(dead_switch_error("m", &[], Some(plugged.pid()), "x").is_none());

        // stopping the VLAN forgets its death; a stop is no death
        drop(vlan);
        assert!(dead_switch_error("m", &env, Some(plugged.pid()), "x").is_none());
        plugged.kill();
        other.kill();
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_stopped_switch_is_no_death() {
        let tmp = std::env::temp_dir().join(format!("ntng-vlan-stop-{}", std::process::id()));
        crate::private::dir(&tmp).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logger = Arc::new(Logger::default());
        logger.add_reporter(Box::new(Lines(lines.clone())));
        let vlan = Vlan::start(8, &tmp, &logger).unwrap();
        let switch = vlan.switch.clone();
        vlan.stop();
        switch.wait(Deadline::after(Some(Duration::from_secs(10))));
        drop(vlan);
        assert!(!lines.lock().unwrap().iter().any(|l| l.contains("died")));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
