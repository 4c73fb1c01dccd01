//! QEMU's snapshots: internal snapshots (`savevm`/`loadvm`) in the qcow2 disks, a warm
//! standby (`standby/`) that makes a restore a switch, and what QEMU's refusals mean.

use super::QemuBackend;
use crate::backend::shares::{is_nix_store, Mount, NIXOS_STORE_FIX};
use crate::backend::{Host, MachineInfo, Rewind, Snapshots};
use crate::error::{Error, Result};

/// Why QEMU refused a `savevm` (its `Error: ...` text, without `Error: `) and what fixes it.
pub(super) fn savevm_refusal(text: &str) -> (String, String) {
    let reason = format!("QEMU refused: {text}");
    let fix = if let Some(tag) = text
        .contains("VirtFS")
        .then(|| text.split("mount_tag '").nth(1))
        .flatten()
        .and_then(|rest| rest.split('\'').next())
    {
        if is_nix_store(tag, "") {
            NIXOS_STORE_FIX.to_string()
        } else {
            format!(
                "the guest still uses the 9p share `{tag}` after it was unmounted (as the lower \
                 layer of an overlay, or mounted in another mount namespace): release it there \
                 before taking snapshots"
            )
        }
    } else if text.contains("non-migratable device") && text.contains("vhost-user-vsock") {
        super::vsock::SNAPSHOT_FIX.to_string()
    } else if text.contains("does not support snapshots") {
        "every writable disk of the VM must be qcow2 or attached read-only (`readonly=on`); \
         for the store image of `virtualisation.useNixStoreImage`, nixos-test-ng's test module \
         does that with `nixos-test-ng.snapshots = true;`"
            .to_string()
    } else if text.to_lowercase().contains("no block device") || text.contains("vmstate") {
        "the VM needs a writable qcow2 disk for snapshots (start scripts written by \
         `nixos-test-ng guest scripts` have one; NixOS VMs have one unless \
         `virtualisation.diskImage = null`)"
            .to_string()
    } else {
        String::new()
    };
    (reason, fix)
}

/// Below this much free space, a failed `savevm` is taken for a full disk: QEMU reports
/// the `ENOSPC` of its VM-state writes only as `Input/output error`.
const LOW_SPACE: u64 = 1 << 20;

/// True when the filesystem holding `dir` has (almost) no space left for this user.
pub(super) fn out_of_space(dir: &std::path::Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct it fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) < LOW_SPACE
}

/// A `savevm` that failed for want of space: the reason names the directory the disks and
/// the VM state are in, and QEMU's own words.
pub(super) fn full_disk_refusal(dir: &std::path::Path, text: &str) -> (String, String) {
    (
        format!(
            "no space left on device: QEMU could not write the snapshot into {} (QEMU: {text})",
            dir.display()
        ),
        "free space there, or point TMPDIR (XDG_RUNTIME_DIR) at a larger directory".to_string(),
    )
}

/// The `Error: ...` line of an HMP answer, without `Error: `.
pub(super) fn hmp_error(answer: &str) -> Option<&str> {
    let i = answer.find("Error")?;
    let line = answer[i..].lines().next().unwrap_or_default().trim();
    Some(line.strip_prefix("Error:").map_or(line, str::trim))
}

fn invalid(info: &MachineInfo, message: String) -> Error {
    Error::InvalidState {
        machine: info.name.clone(),
        message,
    }
}

impl QemuBackend {
    /// Runs an HMP command that prints nothing on success; its `Error: ...` as an error.
    fn monitor_checked(&self, info: &MachineInfo, command: &str) -> Result<()> {
        match hmp_error(&self.hmp(info, command)?) {
            Some(text) => Err(invalid(info, format!("`{command}` failed: {text}"))),
            None => Ok(()),
        }
    }
}

impl QemuBackend {
    /// The running QEMU has a vhost-user vsock device: it cannot be saved, so a snapshot is
    /// refused without touching the VM (no unmounting, no `stop`/`cont`: after those the
    /// guest agent's traffic through vhost-device-vsock 0.3.0 stalled, seen here).
    pub(super) fn unsaveable(&self) -> bool {
        self.running
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|r| r.vsock_daemon.is_some())
    }
}

impl Snapshots for QemuBackend {
    fn unmounts_shares(&self) -> bool {
        !self.unsaveable()
    }

    /// Pauses the VM (which also flushes its disks to the host).
    fn pause(&self, info: &MachineInfo) -> Result<()> {
        if self.unsaveable() {
            return Ok(());
        }
        self.hmp(info, "stop").map(drop)
    }

    fn resume(&self, info: &MachineInfo) -> Result<()> {
        if self.unsaveable() {
            return Ok(());
        }
        self.hmp(info, "cont").map(drop)
    }

    /// `savevm`; the disks also get a golden copy for warm standbys.
    fn save(&self, info: &MachineInfo, name: &str) -> Result<()> {
        if self.unsaveable() {
            return Err(Error::SnapshotRefused {
                machine: info.name.clone(),
                name: name.to_string(),
                reason: super::vsock::SNAPSHOT_REASON.to_string(),
                fix: super::vsock::SNAPSHOT_FIX.to_string(),
            });
        }
        if let Some(text) = hmp_error(&self.hmp(info, &format!("savevm {name}"))?) {
            let (reason, fix) = if out_of_space(&info.state_dir) {
                full_disk_refusal(&info.state_dir, text)
            } else {
                savevm_refusal(text)
            };
            return Err(Error::SnapshotRefused {
                machine: info.name.clone(),
                name: name.to_string(),
                reason,
                fix,
            });
        }
        // `stop` again: it flushes QEMU's caches of the disks to the host before they are copied.
        self.pause(info)?;
        self.keep_golden(info, name)
    }

    /// By switching to its warm standby, or else by `loadvm`.
    fn rewind(&self, host: &dyn Host, name: &str, mounts: &[Mount]) -> Result<Rewind> {
        let info = host.info();
        if self.switch_to_standby(host, name, mounts)? {
            return Ok(Rewind::Adopted);
        }
        self.pause(info)?;
        self.monitor_checked(info, &format!("loadvm {name}"))?;
        Ok(Rewind::InPlace)
    }

    fn prepare(&self, info: &MachineInfo, name: &str, mounts: &[Mount]) {
        self.prepare_standby(info, name, mounts);
    }

    fn wait_ready(&self, timeout: Option<std::time::Duration>) -> Result<bool> {
        self.wait_for_standby(timeout)
    }

    fn boot_save_wanted(&self) -> bool {
        self.cache_wants_save()
    }

    fn save_boot(&self, info: &MachineInfo, mounts: &[Mount]) -> Result<()> {
        self.save_to_cache(info, mounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_as_such() {
        let dir = std::path::Path::new("/tmp/ntng/vm-state-a");
        let (reason, fix) =
            full_disk_refusal(dir, "Error while writing VM state: Input/output error");
        assert_eq!(
            reason,
            "no space left on device: QEMU could not write the snapshot into \
             /tmp/ntng/vm-state-a (QEMU: Error while writing VM state: Input/output error)"
        );
        assert!(fix.contains("TMPDIR"), "{fix}");
        // a directory that cannot be looked at is not taken for a full disk
        assert!(!out_of_space(std::path::Path::new("/nonexistent/ntng")));
    }

    #[test]
    fn qemu_refusals_name_their_fix() {
        let answer = "savevm x\r\nError: Migration is disabled when VirtFS export path \
                      '/nix/store' is mounted in the guest using mount_tag 'nix-store'\r\n";
        let text = hmp_error(answer).unwrap();
        assert!(text.starts_with("Migration is disabled"), "{text}");
        let (reason, fix) = savevm_refusal(text);
        assert_eq!(reason, format!("QEMU refused: {text}"));
        assert_eq!(fix, NIXOS_STORE_FIX);
        assert!(fix.contains("virtualisation.useNixStoreImage = true;"));

        let other = "Migration is disabled when VirtFS export path '/srv' is mounted in the \
                     guest using mount_tag 'data'";
        assert!(savevm_refusal(other).1.contains("the 9p share `data`"));
        let (_, fix) = savevm_refusal("Device 'drive2' is writable but does not support snapshots");
        assert!(fix.contains("qcow2 or attached read-only"), "{fix}");
        let (_, fix) = savevm_refusal("no block device can store vmstate for snapshot");
        assert!(fix.contains("needs a writable qcow2 disk"), "{fix}");
        // QEMU 7.2's words for a vhost-user vsock device the driver did not set up itself
        let (_, fix) = savevm_refusal(
            "State blocked by non-migratable device '0000:00:04.0/vhost-user-vsock'",
        );
        assert!(fix.contains("NIXOS_TEST_NG_TRANSPORT=backdoor"), "{fix}");
        assert_eq!(savevm_refusal("Input/output error").1, "");
        assert_eq!(hmp_error("savevm x\r\n(qemu) "), None);
    }
}
