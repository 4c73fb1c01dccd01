//! VLANs: one `vde_switch` per VLAN number; machines attach through its socket directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::log::Logger;
use crate::process::{self, ChildProcess};

/// A running VLAN.
pub struct Vlan {
    nr: u32,
    socket_dir: PathBuf,
    switch: ChildProcess,
    host_tap: Option<ChildProcess>,
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
        let switch = process::spawn(cmd).map_err(|e| {
            Error::Config(format!(
                "cannot start `vde_switch` for vlan {nr}: {e} (is vde2 installed?)"
            ))
        })?;
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
        Ok(Vlan {
            nr,
            socket_dir,
            switch,
            host_tap: None,
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
