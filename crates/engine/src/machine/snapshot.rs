//! Snapshots: a machine's whole state saved under a name, and restored in a fraction of a boot.
//!
//! VMs use QEMU's internal snapshots (`savevm`/`loadvm`), which need a writable qcow2 disk
//! (the built-in start scripts give every VM one) and no other writable disk that is not
//! qcow2. QEMU refuses to snapshot a guest with a 9p share mounted (a migration blocker:
//! "Migration is disabled when VirtFS export path '...' is mounted in the guest using
//! mount_tag '...'"), so the shares are unmounted around `savevm` and mounted again
//! afterwards, and again after `loadvm` (the restored guest had them unmounted). A share the
//! guest cannot let go of (NixOS's /nix/.ro-store, the host's store under /nix/store) makes a
//! snapshot impossible: [`Error::SnapshotRefused`] says so and names the fix. After a
//! restore the shell is resynchronised on the same connection, without a new handshake.
//! A restore is faster still with a warm standby (`qemu/standby/`): a second QEMU already
//! at the snapshot takes the machine's place, and `loadvm` is the fallback.
//! Containers run on a fresh tmpfs overlay, so their cheapest correct reset is a restart:
//! `restore` of a container brings back the state right after its boot.

use std::time::Duration;

use super::{ExecOptions, Machine};
use crate::config::MachineKind;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::qemu::{QemuBackend, Rewind};
use crate::transport::shell::shell_quote as q;

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

/// The lower layers of the overlay mounts in a `/proc/mounts` text: (lower directory,
/// overlay mount point).
pub fn overlay_lowers(proc_mounts: &str) -> Vec<(String, String)> {
    proc_mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "overlay").then_some(f)
        })
        .flat_map(|f| {
            let point = unescape(f[1]);
            let lowers = f[3]
                .split(',')
                .find_map(|o| o.strip_prefix("lowerdir="))
                .unwrap_or_default();
            lowers
                .split(':')
                .filter(|l| !l.is_empty())
                .map(move |l| (unescape(l), point.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The shares that an overlay uses as a lower layer (at or below their mount point): the guest
/// keeps using them even once they are unmounted. Each with the overlay's mount point.
fn held_by_overlays<'a>(shares: &'a [Mount], proc_mounts: &str) -> Vec<(&'a Mount, String)> {
    let lowers = overlay_lowers(proc_mounts);
    shares
        .iter()
        .filter_map(|m| {
            let inside = |l: &str| {
                l == m.point
                    || l.strip_prefix(m.point.as_str())
                        .is_some_and(|rest| rest.starts_with('/') || m.point == "/")
            };
            lowers
                .iter()
                .find(|(l, _)| inside(l))
                .map(|(_, overlay)| (m, overlay.clone()))
        })
        .collect()
}

/// One shell command mounting `mounts` (`None` when there are none); each is tried even when
/// another fails, and the command fails when one did.
pub(crate) fn mount_command(mounts: &[Mount]) -> Option<String> {
    let parts: Vec<String> = mounts
        .iter()
        .map(|m| {
            format!(
                "mkdir -p {p} && mount -t {t} -o {o} {d} {p} || ntng_s=1",
                p = q(&m.point),
                t = q(&m.fstype),
                o = q(&m.options),
                d = q(&m.device)
            )
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "{{ ntng_s=0; {}; [ $ntng_s = 0 ]; }} 2>&1",
            parts.join("; ")
        )
    })
}

/// What makes a NixOS VM snapshottable: its view of the host's store is what blocks it.
pub const NIXOS_STORE_FIX: &str = "this is a NixOS VM's view of the host's Nix store (9p tag \
    `nix-store` under /nix/store, which NixOS keeps while it runs): give the VMs their store as \
    a read-only disk image instead, `virtualisation.useNixStoreImage = true;` with the image \
    attached read-only, which nixos-test-ng's test module does with \
    `nixos-test-ng.snapshots = true;`";

/// A share NixOS mounts for the host's store.
fn is_nix_store(tag: &str, point: &str) -> bool {
    tag == "nix-store" || point == "/nix/.ro-store"
}

/// The fix for shares the guest cannot let go of: NixOS's when the host store is among them.
fn share_fix<'a>(mut shares: impl Iterator<Item = &'a Mount>, otherwise: &str) -> String {
    if shares.any(|m| is_nix_store(&m.device, &m.point)) {
        NIXOS_STORE_FIX.to_string()
    } else {
        otherwise.to_string()
    }
}

/// Why QEMU refused a `savevm` (its `Error: ...` text, without `Error: `) and what fixes it.
pub(crate) fn savevm_refusal(text: &str) -> (String, String) {
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

/// The `Error: ...` line of an HMP answer, without `Error: `.
fn hmp_error(answer: &str) -> Option<&str> {
    let i = answer.find("Error")?;
    let line = answer[i..].lines().next().unwrap_or_default().trim();
    Some(line.strip_prefix("Error:").map_or(line, str::trim))
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

    fn vm(&self) -> Result<&QemuBackend> {
        self.qemu()
            .ok_or_else(|| self.snapshot_error("this needs a QEMU machine".to_string()))
    }

    /// An HMP command without the polling-condition hook (the VM may be paused).
    fn hmp(&self, command: &str) -> Result<String> {
        self.vm()?.hmp(&self.info, command)
    }

    /// Pauses the VM (which also flushes its disks to the host).
    pub(crate) fn pause(&self) -> Result<()> {
        self.hmp("stop").map(drop)
    }

    /// Resumes the VM.
    pub(crate) fn resume(&self) -> Result<()> {
        self.hmp("cont").map(drop)
    }

    /// Runs an HMP command that prints nothing on success; its `Error: ...` as an error.
    fn monitor_checked(&self, command: &str) -> Result<()> {
        match hmp_error(&self.hmp(command)?) {
            Some(text) => Err(self.snapshot_error(format!("`{command}` failed: {text}"))),
            None => Ok(()),
        }
    }

    fn refused(&self, name: &str, reason: String, fix: String) -> Error {
        Error::SnapshotRefused {
            machine: self.name().to_string(),
            name: name.to_string(),
            reason,
            fix,
        }
    }

    fn proc_mounts(&self) -> Result<String> {
        Ok(self.execute("cat /proc/mounts", ExecOptions::default())?.1)
    }

    /// Unmounts the guest's shared directories for snapshot `name`; returns them for
    /// [`Machine::mount_shares`]. A share the guest cannot let go of (the lower layer of an
    /// overlay, or busy) refuses the snapshot, naming it; the shares are then as before.
    pub(crate) fn unmount_shares(&self, name: &str) -> Result<Vec<Mount>> {
        let text = self.proc_mounts()?;
        let mounts = shared_mounts(&text);
        if mounts.is_empty() {
            return Ok(mounts);
        }
        // Unmounting it would succeed (the overlay keeps a private copy of the mount) and
        // change nothing for QEMU, and it could not be mounted again: leave it.
        let held = held_by_overlays(&mounts, &text);
        if !held.is_empty() {
            let names: Vec<String> = held
                .iter()
                .map(|(m, overlay)| {
                    format!(
                        "`{}` at {}: it is a lower layer of the overlay on {overlay}",
                        m.device, m.point
                    )
                })
                .collect();
            return Err(self.refused(
                name,
                format!(
                    "QEMU cannot save a VM with a 9p share in use, and the guest cannot let go \
                     of {}",
                    names.join("; ")
                ),
                share_fix(held.iter().map(|(m, _)| *m), "unmount that overlay first"),
            ));
        }
        let points: Vec<String> = mounts.iter().rev().map(|m| q(&m.point)).collect();
        let (status, out) = self.execute(
            &format!("sync; umount {} 2>&1", points.join(" ")),
            ExecOptions::default(),
        )?;
        if status == 0 {
            return Ok(mounts);
        }
        let still = shared_mounts(&self.proc_mounts()?);
        let (busy, gone): (Vec<Mount>, Vec<Mount>) = mounts.into_iter().partition(|m| {
            still
                .iter()
                .any(|s| s.point == m.point && s.device == m.device)
        });
        let _ = self.mount_shares(&gone);
        let names: Vec<String> = busy
            .iter()
            .map(|m| format!("`{}` at {}", m.device, m.point))
            .collect();
        let fix = share_fix(
            busy.iter(),
            "stop what keeps it busy in the guest (a process working in it or holding its \
             files open)",
        );
        Err(self.refused(
            name,
            format!(
                "QEMU cannot save a VM with a 9p share mounted, and the guest cannot unmount {} \
                 ({})",
                if names.is_empty() {
                    "its shares".to_string()
                } else {
                    names.join(", ")
                },
                out.trim()
            ),
            fix,
        ))
    }

    /// Mounts what [`Machine::unmount_shares`] unmounted (one command).
    pub(crate) fn mount_shares(&self, mounts: &[Mount]) -> Result<()> {
        let Some(cmd) = mount_command(mounts) else {
            return Ok(());
        };
        let (status, out) = self.execute(&cmd, ExecOptions::default())?;
        if status != 0 {
            let points: Vec<&str> = mounts.iter().map(|m| m.point.as_str()).collect();
            return Err(self.snapshot_error(format!(
                "cannot mount {} again after the snapshot: {}",
                points.join(", "),
                out.trim()
            )));
        }
        Ok(())
    }

    /// The QEMU half of a snapshot, once the shares are unmounted and the VM is paused: the
    /// disks also get a golden copy for warm standbys (see `qemu/standby/`).
    pub(crate) fn savevm(&self, name: &str) -> Result<()> {
        if let Some(text) = hmp_error(&self.hmp(&format!("savevm {name}"))?) {
            let (reason, fix) = savevm_refusal(text);
            return Err(self.refused(name, reason, fix));
        }
        // `stop` again: it flushes QEMU's caches of the disks to the host before they are copied.
        self.pause()?;
        self.vm()?.keep_golden(&self.info, name)
    }

    /// Records a snapshot taken; a VM gets a warm standby for it in the background.
    pub(crate) fn remember_snapshot(&self, name: &str, mounts: Vec<Mount>) {
        if let Some(qemu) = self.qemu() {
            qemu.prepare_standby(&self.info, name, &mounts);
        }
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

    /// The QEMU half of a restore: the VM rewound to `name` and left paused, by switching to
    /// its warm standby, or else by `loadvm`.
    pub(crate) fn rewind(&self, name: &str, mounts: &[Mount]) -> Result<Rewind> {
        if self.vm()?.switch_to_standby(&self.info, name, mounts)? {
            return Ok(Rewind::Standby);
        }
        self.pause()?;
        self.monitor_checked(&format!("loadvm {name}"))?;
        Ok(Rewind::Loadvm)
    }

    /// After the guest was rewound and resumed: after `loadvm`, the shell resynchronised and
    /// the shares mounted again (a standby did that ahead). Then the next standby is prepared.
    pub(crate) fn after_restore(&self, name: &str, how: Rewind, mounts: &[Mount]) -> Result<()> {
        if how == Rewind::Loadvm {
            self.backend.shell().resync(
                &self.info,
                self.backend.console(),
                Deadline::after(Some(RESYNC_TIMEOUT)),
            )?;
            self.mount_shares(mounts)?;
        }
        self.vm()?.prepare_standby(&self.info, name, mounts);
        Ok(())
    }

    /// Waits until the warm standby being prepared is ready (VMs); false when there is none
    /// (standbys off, or it failed: restores then use `loadvm`) or `timeout` passed.
    pub fn wait_for_standby(&self, timeout: Option<Duration>) -> Result<bool> {
        match self.qemu() {
            Some(qemu) => qemu.wait_for_standby(timeout),
            None => Ok(false),
        }
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
        let mounts = self.unmount_shares(name)?;
        let saved = self.pause().and_then(|()| self.savevm(name));
        let resumed = self.resume();
        let mounted = self.mount_shares(&mounts);
        saved?;
        resumed?;
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
            let how = self.rewind(name, &mounts)?;
            self.resume()?;
            self.after_restore(name, how, &mounts)?;
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
    fn one_command_mounts_every_share() {
        assert_eq!(mount_command(&[]), None);
        let m = shared_mounts(
            "shared /tmp/shared 9p rw,trans=virtio 0 0\nxchg /tmp/my\\040dir 9p rw 0 0\n",
        );
        assert_eq!(
            mount_command(&m).unwrap(),
            "{ ntng_s=0; mkdir -p /tmp/shared && mount -t 9p -o rw,trans=virtio shared \
             /tmp/shared || ntng_s=1; mkdir -p '/tmp/my dir' && mount -t 9p -o rw xchg \
             '/tmp/my dir' || ntng_s=1; [ $ntng_s = 0 ]; } 2>&1"
        );
    }

    #[test]
    fn shares_under_an_overlay_are_found() {
        // NixOS with the host's store over 9p (writableStore)
        let text = "nix-store /nix/.ro-store 9p rw,relatime,loose,trans=virtio 0 0\n\
                    shared /tmp/shared 9p rw,trans=virtio 0 0\n\
                    overlay /nix/store overlay rw,relatime,lowerdir=/nix/.ro-store,\
                    upperdir=/nix/.rw-store/upper,workdir=/nix/.rw-store/work 0 0\n\
                    overlay /srv overlay rw,lowerdir=/a:/tmp/shared/sub,upperdir=/u,workdir=/w 0 0\n";
        assert_eq!(
            overlay_lowers(text),
            [
                ("/nix/.ro-store".to_string(), "/nix/store".to_string()),
                ("/a".to_string(), "/srv".to_string()),
                ("/tmp/shared/sub".to_string(), "/srv".to_string()),
            ]
        );
        let shares = shared_mounts(text);
        let held: Vec<(String, String)> = held_by_overlays(&shares, text)
            .into_iter()
            .map(|(m, o)| (m.device.clone(), o))
            .collect();
        let want = [("nix-store", "/nix/store"), ("shared", "/srv")];
        assert_eq!(held, want.map(|(d, o)| (d.to_string(), o.to_string())));
        // `/tmp/sharedx` is not under `/tmp/shared`
        let other = "shared /tmp/shared 9p rw 0 0\noverlay /o overlay lowerdir=/tmp/sharedx 0 0\n";
        assert!(held_by_overlays(&shared_mounts(other), other).is_empty());
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
        assert_eq!(savevm_refusal("Input/output error").1, "");
        assert_eq!(hmp_error("savevm x\r\n(qemu) "), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("ready-1.x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("x;quit"));
    }
}
