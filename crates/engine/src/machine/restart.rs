//! A clean restart: what a test's isolation falls back to when the machine cannot be
//! snapshotted. The machine is killed, its state directory (its disk images, which the start
//! script makes anew when they are missing) is deleted unless the run keeps machine state, and
//! it boots again, as at the start of a fresh run.

use super::{create_state_dir, remove_state_dir, Machine};
use crate::error::Result;

impl Machine {
    /// Kills the machine, deletes its state directory unless `--keep-machine-state` (true is
    /// returned when it was kept), starts it again and waits for the backdoor. The snapshots
    /// taken so far are forgotten: they lived in the deleted disks.
    pub fn restart_fresh(&self) -> Result<bool> {
        let dir = &self.info.state_dir;
        let block = self.nested(&if self.keep_state {
            format!(
                "restarting with its state directory {} kept (--keep-machine-state)",
                dir.display()
            )
        } else {
            format!("restarting with a fresh state directory {}", dir.display())
        });
        self.release();
        self.snapshots.lock().unwrap().clear();
        if !self.keep_state {
            if dir.exists() {
                block.check(remove_state_dir(dir))?;
            }
            block.check(create_state_dir(&self.info))?;
        }
        block.check(self.start(false))?;
        block.check(self.connect())?;
        block.finish();
        Ok(self.keep_state)
    }
}
