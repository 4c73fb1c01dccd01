//! Virtual terminals and X, read through the shell (upstream's `get_tty_text`,
//! `wait_until_tty_matches`, `dump_tty_contents`, `wait_for_x`, `get_window_names`,
//! `wait_for_window`). Patterns are matched by the caller (`accept`), so Python scripts keep
//! Python's regular expressions.

use std::time::Duration;

use super::{ExecOptions, Machine};
use crate::error::Result;

/// Upstream's sed expression that extracts the window names from `xwininfo -root -tree`.
const WINDOW_NAMES: &str =
    r#"xwininfo -root -tree | sed 's/.*0x[0-9a-f]* \"\([^\"]*\)\".*/\1/; t; d'"#;

impl Machine {
    /// The text on virtual terminal `tty` (`/dev/vcs<tty>`), folded at its width.
    pub fn get_tty_text(&self, tty: &str) -> Result<String> {
        self.succeed(
            &[format!(
                "fold -w$(stty -F /dev/tty{tty} size | awk '{{print $2}}') /dev/vcs{tty}"
            )],
            None,
        )
    }

    /// Waits until `accept` takes the text of virtual terminal `tty`; the last try logs it.
    pub fn wait_until_tty_matches(
        &self,
        tty: &str,
        what: &str,
        timeout: Option<Duration>,
        accept: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<()> {
        self.wait_until(
            "wait_until_tty_matches",
            &format!("waiting for {what} to appear on tty {tty}"),
            timeout,
            |last_try| {
                let text = self.get_tty_text(tty)?;
                let found = accept(&text)?;
                if !found && last_try {
                    self.log(&format!(
                        "Last chance to match {what} on TTY{tty}, which currently contains: {text}"
                    ));
                }
                Ok(found.then_some(()))
            },
        )
    }

    /// Writes the text of virtual terminal `tty` into the guest's journal.
    pub fn dump_tty_contents(&self, tty: &str) -> Result<()> {
        self.succeed(&[format!("fold -w 80 /dev/vcs{tty} | systemd-cat")], None)
            .map(drop)
    }

    /// Waits until the X server is up: `graphical.target` reached and its socket there.
    pub fn wait_for_x(&self, timeout: Option<Duration>) -> Result<()> {
        self.wait_until("wait_for_x", "waiting for the X11 server", timeout, |_| {
            let (status, _) = self.run_command(
                "journalctl -b SYSLOG_IDENTIFIER=systemd | grep 'Reached target Current graphical'",
                ExecOptions::default(),
            )?;
            if status != 0 {
                return Ok(None);
            }
            let (status, _) =
                self.run_command("[ -e /tmp/.X11-unix/X0 ]", ExecOptions::default())?;
            Ok((status == 0).then_some(()))
        })
    }

    /// The names of the X windows (`xwininfo -root -tree`).
    pub fn get_window_names(&self) -> Result<Vec<String>> {
        let out = self.succeed(&[WINDOW_NAMES.to_string()], None)?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Waits until `accept` takes one of the window names.
    pub fn wait_for_window(
        &self,
        what: &str,
        timeout: Option<Duration>,
        accept: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<()> {
        self.wait_until(
            "wait_for_window",
            "waiting for a window to appear",
            timeout,
            |last_try| {
                let names = self.get_window_names()?;
                for name in &names {
                    if accept(name)? {
                        return Ok(Some(()));
                    }
                }
                if last_try {
                    self.log(&format!(
                    "Last chance to match {what} on the window list, which currently contains: {}",
                    names.join(", ")
                ));
                }
                Ok(None)
            },
        )
    }
}
