//! Snapshots: a machine's whole state saved under a name, and restored in a fraction of a boot.
//!
//! VMs use QEMU's internal snapshots (`savevm`/`loadvm`), which need a writable qcow2 disk
//! (the built-in start scripts give every VM one). QEMU refuses to snapshot a guest with a
//! 9p or virtiofs share mounted, so the shares are unmounted around `savevm` and mounted again
//! afterwards, and again after `loadvm` (the restored guest had them unmounted). After a
//! restore the shell is resynchronised on the same connection, without a new handshake.
//! Containers run on a fresh tmpfs overlay, so their cheapest correct reset is a restart:
//! `restore` of a container brings back the state right after its boot.

use std::time::Duration;

use super::{ExecOptions, Machine};
use crate::config::MachineKind;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;

/// How long a restored guest's shell may take to answer.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// A shared-directory mount of the guest, as `/proc/mounts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub point: String,
    pub fstype: String,
    pub options: String,
}

/// The 9p and virtiofs mounts in a `/proc/mounts` text (octal escapes decoded).
pub fn shared_mounts(proc_mounts: &str) -> Vec<Mount> {
    proc_mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4 && (f[2] == "9p" || f[2] == "virtiofs")).then(|| Mount {
                device: unescape(f[0]),
                point: unescape(f[1]),
                fstype: f[2].to_string(),
                options: f[3].to_string(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Machine {
    fn snapshot_error(&self, message: String) -> Error {
        Error::InvalidState {
            machine: self.name().to_string(),
            message,
        }
    }

    /// The names of the snapshots taken so far.
    pub fn snapshot_names(&self) -> Vec<String> {
        self.snapshots.lock().unwrap().keys().cloned().collect()
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(self.snapshot_error(format!(
                "invalid snapshot name {name:?}: use letters, digits, `.`, `_`, `-` (at most 64)"
            )))
        }
    }

    /// Runs an HMP command that prints nothing on success; its `Error: ...` as an error.
    fn monitor_checked(&self, command: &str) -> Result<()> {
        let answer = self.send_monitor_command(command)?;
        match answer.find("Error") {
            Some(i) => {
                let text = answer[i..].lines().next().unwrap_or_default().trim();
                let lower = text.to_lowercase();
                let hint = if lower.contains("block device can")
                    || lower.contains("vmstate")
                    || lower.contains("does not support")
                {
                    " (the VM needs a writable qcow2 disk for snapshots: start scripts written \
                     by `nixos-test-ng guest scripts` add one)"
                } else {
                    ""
                };
                Err(self.snapshot_error(format!("`{command}` failed: {text}{hint}")))
            }
            None => Ok(()),
        }
    }

    /// Unmounts the guest's shared directories; returns them for [`Machine::mount_shares`].
    pub(crate) fn unmount_shares(&self) -> Result<Vec<Mount>> {
        let (_, text) = self.execute("cat /proc/mounts", ExecOptions::default())?;
        let mounts = shared_mounts(&text);
        if mounts.is_empty() {
            return Ok(mounts);
        }
        let points: Vec<String> = mounts
            .iter()
            .rev()
            .map(|m| crate::transport::shell::shell_quote(&m.point))
            .collect();
        let (status, out) = self.execute(
            &format!("sync; umount {} 2>&1", points.join(" ")),
            ExecOptions::default(),
        )?;
        if status != 0 {
            let _ = self.mount_shares(&mounts);
            return Err(self.snapshot_error(format!(
                "cannot unmount the shared directories for a snapshot (QEMU cannot save a guest \
                 with them mounted): {}",
                out.trim()
            )));
        }
        Ok(mounts)
    }

    /// Mounts what [`Machine::unmount_shares`] unmounted.
    pub(crate) fn mount_shares(&self, mounts: &[Mount]) -> Result<()> {
        use crate::transport::shell::shell_quote as q;
        for m in mounts {
            let cmd = format!(
                "mkdir -p {p} && mount -t {t} -o {o} {d} {p} 2>&1",
                p = q(&m.point),
                t = q(&m.fstype),
                o = q(&m.options),
                d = q(&m.device)
            );
            let (status, out) = self.execute(&cmd, ExecOptions::default())?;
            if status != 0 {
                return Err(self.snapshot_error(format!(
                    "cannot mount {} again after the snapshot: {}",
                    m.point,
                    out.trim()
                )));
            }
        }
        Ok(())
    }

    /// The QEMU half of a snapshot, once the shares are unmounted.
    pub(crate) fn savevm(&self, name: &str) -> Result<()> {
        self.monitor_checked(&format!("savevm {name}"))
    }

    /// Records a snapshot taken.
    pub(crate) fn remember_snapshot(&self, name: &str, mounts: Vec<Mount>) {
        self.snapshots
            .lock()
            .unwrap()
            .insert(name.to_string(), mounts);
    }

    /// The mounts of snapshot `name`, or an error naming the snapshots there are.
    pub(crate) fn snapshot_mounts(&self, name: &str) -> Result<Vec<Mount>> {
        self.check_name(name)?;
        if !self.booted() {
            return Err(self.snapshot_error(format!(
                "cannot restore snapshot {name:?}: the machine is not running"
            )));
        }
        let snapshots = self.snapshots.lock().unwrap();
        snapshots.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = snapshots.keys().map(String::as_str).collect();
            self.snapshot_error(format!(
                "no snapshot named {name:?} (taken: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// The QEMU half of a restore: `loadvm`, then the shell on the same connection.
    pub(crate) fn loadvm(&self, name: &str) -> Result<()> {
        self.monitor_checked(&format!("loadvm {name}"))
    }

    /// After the guest was rewound: the shell resynchronised, the shares mounted again.
    pub(crate) fn after_restore(&self, mounts: &[Mount]) -> Result<()> {
        self.backend.shell().resync(
            &self.info,
            self.backend.console(),
            Deadline::after(Some(RESYNC_TIMEOUT)),
        )?;
        self.mount_shares(mounts)
    }

    /// Saves the machine's state as `name` (replacing an older snapshot of that name).
    pub fn snapshot(&self, name: &str) -> Result<()> {
        self.check_name(name)?;
        if !self.booted() {
            return Err(self.snapshot_error(format!(
                "cannot take snapshot {name:?}: the machine is not running"
            )));
        }
        let block = self.nested(&format!("taking snapshot {name}"));
        self.connect()?;
        if self.kind() == MachineKind::Nspawn {
            self.remember_snapshot(name, Vec::new());
            block.finish();
            return Ok(());
        }
        let mounts = self.unmount_shares()?;
        let saved = self.savevm(name);
        let mounted = self.mount_shares(&mounts);
        saved?;
        mounted?;
        self.remember_snapshot(name, mounts);
        block.finish();
        Ok(())
    }

    /// Brings the machine back to snapshot `name`. A container restarts (its state right
    /// after boot: it runs on a fresh overlay).
    pub fn restore(&self, name: &str) -> Result<()> {
        let mounts = self.snapshot_mounts(name)?;
        let block = self.nested(&format!("restoring snapshot {name}"));
        if self.kind() == MachineKind::Nspawn {
            self.release();
            self.start(false)?;
            self.connect()?;
        } else {
            self.loadvm(name)?;
            self.after_restore(&mounts)?;
        }
        block.finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_mounts_are_found_and_decoded() {
        let text = "proc /proc proc rw 0 0\n\
                    shared /tmp/shared 9p rw,trans=virtio 0 0\n\
                    xchg /tmp/my\\040dir 9p rw,sync 0 0\n\
                    fs /mnt/v virtiofs rw 0 0\n";
        let m = shared_mounts(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].point, "/tmp/my dir");
        assert_eq!(m[0].options, "rw,trans=virtio");
        assert_eq!(m[2].fstype, "virtiofs");
    }

    #[test]
    fn names() {
        assert!(valid_name("ready-1.x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("x;quit"));
    }
}
