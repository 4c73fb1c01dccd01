//! Snapshots: a machine's whole state saved under a name, and restored in a fraction of a boot.
//! This is the order of operations, written once; a backend's [`Snapshots`] capability does
//! the saving and rewinding (QEMU: `qemu/snapshot.rs`, with its warm standbys).
//!
//! ```text
//! snapshot: connect → unmount the shares (when the backend needs it) → pause → save
//!           → resume → mount the shares → remember (the backend prepares the next restore)
//! restore:  rewind (paused; in place, or by adopting a new launch) → resume
//!           → in place: shell resync, mount the shares → prepare the next restore
//! ```
//!
//! QEMU refuses to snapshot a guest with a 9p share mounted (a migration blocker), so the
//! shares are unmounted around the save and mounted again afterwards, and again after a
//! rewind in place (the restored guest had them unmounted). A share the guest cannot let go
//! of (NixOS's /nix/.ro-store, the host's store under /nix/store) makes a snapshot
//! impossible: [`Error::SnapshotRefused`] says so and names the fix. After a rewind in place
//! the shell is resynchronised on the same connection, without a new handshake.
//! A backend whose restart is a reset (a container on a fresh overlay) has no snapshots to
//! save: its `restore` restarts it, which brings back the state right after its boot.

use std::time::Duration;

use super::{ExecOptions, Machine};
use crate::backend::caps::{Capability, Rewind, Snapshots};
use crate::backend::shares::{held_by_overlays, mount_command, share_fix, shared_mounts, Mount};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::transport::shell::shell_quote as q;

/// How long a restored guest's shell may take to answer.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(60);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// How a machine takes snapshots.
pub(crate) enum Support<'a> {
    /// Its backend saves and rewinds it.
    Saved(&'a dyn Snapshots),
    /// A restart is its reset: a snapshot is only a name.
    Restart,
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

    /// How this machine takes snapshots, or `Unsupported` for `operation`.
    pub(crate) fn snapshot_support(&self, operation: &str) -> Result<Support<'_>> {
        match self.backend.snapshots() {
            Some(s) => Ok(Support::Saved(s)),
            None if self.backend.restart_resets() => Ok(Support::Restart),
            None => Err(self.unsupported(operation, Capability::Snapshots)),
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

    /// Records a snapshot taken; the backend gets ready for its restore.
    pub(crate) fn remember_snapshot(&self, name: &str, mounts: Vec<Mount>) {
        if let Some(s) = self.backend.snapshots() {
            s.prepare(&self.info, name, &mounts);
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

    /// After the guest was rewound and resumed: after a rewind in place, the shell
    /// resynchronised and the shares mounted again (an adopted launch did that ahead). Then
    /// the backend gets ready for the next restore.
    pub(crate) fn after_restore(
        &self,
        snapshots: &dyn Snapshots,
        name: &str,
        how: Rewind,
        mounts: &[Mount],
    ) -> Result<()> {
        if how == Rewind::InPlace {
            self.resync_session(Deadline::after(Some(RESYNC_TIMEOUT)))?;
            self.mount_shares(mounts)?;
        }
        snapshots.prepare(&self.info, name, mounts);
        Ok(())
    }

    /// Waits until what the backend prepares for the next restore is ready (a VM's warm
    /// standby); false when there is none (standbys off, or it failed: restores then use
    /// `loadvm`) or `timeout` passed.
    pub fn wait_for_standby(&self, timeout: Option<Duration>) -> Result<bool> {
        match self.backend.snapshots() {
            Some(s) => s.wait_ready(timeout),
            None => Ok(false),
        }
    }

    /// Unmounts the shares when the backend needs it (see [`Machine::unmount_shares`]).
    pub(crate) fn unmount_for(&self, snapshots: &dyn Snapshots, name: &str) -> Result<Vec<Mount>> {
        if snapshots.unmounts_shares() {
            self.unmount_shares(name)
        } else {
            Ok(Vec::new())
        }
    }

    /// At the first handshake of a launch the boot cache wants saved: the shares unmounted,
    /// the guest paused and saved, resumed, the shares mounted again. A VM that cannot be
    /// saved only gets a log line saying why and what would make it cacheable.
    pub(crate) fn save_boot(&self) -> Result<()> {
        let Some(s) = self.backend.snapshots() else {
            return Ok(());
        };
        if !s.boot_save_wanted() {
            return Ok(());
        }
        let not_saved = |e: Error| match e {
            Error::SnapshotRefused { reason, fix, .. } if fix.is_empty() => {
                self.log(&format!("not saved in the boot cache: {reason}"))
            }
            Error::SnapshotRefused { reason, fix, .. } => self.log(&format!(
                "not saved in the boot cache: {reason}; to make it cacheable: {fix}"
            )),
            e => self.log(&format!("not saved in the boot cache: {e}")),
        };
        let mounts = match self.unmount_for(s, crate::qemu::boot_cache::SNAPSHOT) {
            Ok(m) => m,
            Err(e) => {
                not_saved(e);
                return Ok(());
            }
        };
        let saved = s
            .pause(&self.info)
            .and_then(|()| s.save_boot(&self.info, &mounts));
        let resumed = s.resume(&self.info);
        let mounted = self.mount_shares(&mounts);
        if let Err(e) = saved {
            not_saved(e);
        }
        resumed?;
        mounted
    }

    /// Saves the machine's state as `name` (replacing an older snapshot of that name).
    pub fn snapshot(&self, name: &str) -> Result<()> {
        self.check_name(name)?;
        if !self.booted() {
            return Err(self.snapshot_error(format!(
                "cannot take snapshot {name:?}: the machine is not running"
            )));
        }
        let support = self.snapshot_support("snapshot")?;
        let block = self.nested(&format!("taking snapshot {name}"));
        self.connect()?;
        let Support::Saved(s) = support else {
            self.remember_snapshot(name, Vec::new());
            block.finish();
            return Ok(());
        };
        let mounts = self.unmount_for(s, name)?;
        let saved = s.pause(&self.info).and_then(|()| s.save(&self.info, name));
        let resumed = s.resume(&self.info);
        let mounted = self.mount_shares(&mounts);
        saved?;
        resumed?;
        mounted?;
        self.remember_snapshot(name, mounts);
        block.finish();
        Ok(())
    }

    /// Brings the machine back to snapshot `name`. A machine whose restart is a reset (a
    /// container) restarts.
    pub fn restore(&self, name: &str) -> Result<()> {
        let support = self.snapshot_support("restore")?;
        let mounts = self.snapshot_mounts(name)?;
        let block = self.nested(&format!("restoring snapshot {name}"));
        match support {
            Support::Restart => {
                self.release();
                self.start(false)?;
                self.connect()?;
            }
            Support::Saved(s) => {
                let how = s.rewind(self, name, &mounts)?;
                s.resume(&self.info)?;
                self.after_restore(s, name, how, &mounts)?;
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
    fn names() {
        assert!(valid_name("ready-1.x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("x;quit"));
    }
}
