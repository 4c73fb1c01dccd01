//! The systemd part of the Machine API.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ExecOptions, Machine};
use crate::error::{Error, Result};

fn user_suffix(user: Option<&str>) -> String {
    user.map(|u| format!(" under user \"{u}\""))
        .unwrap_or_default()
}

fn parse_show(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Machine {
    /// `systemctl <q>`, as root or, with `user`, in that user's manager.
    pub fn systemctl(&self, q: &str, user: Option<&str>) -> Result<(i32, String)> {
        let command = match user {
            None => format!("systemctl {q}"),
            Some(u) => {
                let q = q.replace('\'', "\\'");
                format!(
                    "su -l {u} --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}'"
                )
            }
        };
        self.run_command(&command, ExecOptions::default())
    }

    /// All properties of `unit`.
    pub fn get_unit_info(
        &self,
        unit: &str,
        user: Option<&str>,
    ) -> Result<BTreeMap<String, String>> {
        let (status, out) = self.systemctl(&format!("--no-pager show \"{unit}\""), user)?;
        if status != 0 {
            return Err(Error::UnitState {
                machine: self.name().to_string(),
                message: format!(
                    "retrieving systemctl info for unit \"{unit}\"{} failed with exit code {status}",
                    user_suffix(user)
                ),
            });
        }
        Ok(parse_show(&out))
    }

    /// One property of `unit`.
    pub fn get_unit_property(
        &self,
        unit: &str,
        property: &str,
        user: Option<&str>,
    ) -> Result<String> {
        let (status, out) = self.systemctl(
            &format!("--no-pager show \"{unit}\" --property=\"{property}\""),
            user,
        )?;
        if status != 0 {
            return Err(Error::UnitState {
                machine: self.name().to_string(),
                message: format!(
                    "retrieving systemctl property \"{property}\" for unit \"{unit}\"{} failed with exit code {status}",
                    user_suffix(user)
                ),
            });
        }
        let line = out.trim_end_matches('\n');
        match line.split_once('=') {
            Some((k, v)) if k == property && !line.contains('\n') => Ok(v.to_string()),
            _ => Err(Error::UnitState {
                machine: self.name().to_string(),
                message: format!(
                    "systemctl show --property \"{property}\" \"{unit}\" produced invalid output: {line:?}"
                ),
            }),
        }
    }

    /// Waits until `unit` is active; fails early when it failed or is inactive with no jobs.
    pub fn wait_for_unit(
        &self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let what = match user {
            Some(u) => format!("waiting for unit {unit} with user {u}"),
            None => format!("waiting for unit {unit}"),
        };
        self.wait_until("wait_for_unit", &what, timeout, |_| {
            let state = match self.get_unit_property(unit, "ActiveState", user) {
                Ok(state) => state,
                // Early in a boot systemd may not answer yet (upstream fails at once here).
                Err(_) if !self.manager_reachable(user)? => return Ok(None),
                Err(e) => return Err(e),
            };
            if state == "failed" {
                return Err(self.unit_error(
                    unit,
                    user,
                    format!("unit \"{unit}\" reached state \"{state}\""),
                ));
            }
            if state == "inactive" {
                let (_, jobs) = self.systemctl("list-jobs --full 2>&1", user)?;
                if jobs.contains("No jobs") {
                    let info = self.get_unit_info(unit, user)?;
                    if info.get("ActiveState").map(String::as_str) == Some("inactive") {
                        return Err(self.unit_error(
                            unit,
                            user,
                            format!("unit \"{unit}\" is inactive and there are no pending jobs"),
                        ));
                    }
                }
            }
            Ok((state == "active").then_some(()))
        })
    }

    /// False while the service manager cannot be reached yet (still booting).
    fn manager_reachable(&self, user: Option<&str>) -> Result<bool> {
        let (_, out) = self.systemctl("is-system-running 2>&1 || true", user)?;
        let booting = [
            "Failed to connect to bus",
            "System has not been booted",
            "offline",
        ];
        Ok(!booting.iter().any(|b| out.contains(b)))
    }

    /// A unit error with the unit's status and journal tail appended (better than upstream).
    fn unit_error(&self, unit: &str, user: Option<&str>, message: String) -> Error {
        let user_flag = if user.is_some() { " --user" } else { "" };
        let detail = self
            .execute_unhooked(
                &format!(
                    "systemctl{user_flag} --no-pager status \"{unit}\" 2>&1 | head -n 20; echo; journalctl --no-pager -n 20{} -u \"{unit}\" 2>&1",
                    if user.is_some() { " --user" } else { "" }
                ),
                ExecOptions::with_timeout(Some(Duration::from_secs(30))),
            )
            .map(|(_, o)| o)
            .unwrap_or_default();
        let message = if detail.trim().is_empty() {
            message
        } else {
            format!("{message}\n{}", detail.trim_end())
        };
        Error::UnitState {
            machine: self.name().to_string(),
            message,
        }
    }

    /// Fails unless `unit` is in `state`.
    pub fn require_unit_state(&self, unit: &str, state: &str) -> Result<()> {
        let block = self.op(
            "require_unit_state",
            &format!("checking if unit '{unit}' has reached state '{state}'"),
        );
        let info = self.get_unit_info(unit, None)?;
        let actual = info.get("ActiveState").cloned().unwrap_or_default();
        if actual != state {
            return Err(Error::UnitState {
                machine: self.name().to_string(),
                message: format!(
                    "Expected unit '{unit}' to to be in state '{state}' but it is in state '{actual}'"
                ),
            });
        }
        block.finish();
        Ok(())
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::parse_show;

    #[test]
    fn show_output_is_parsed() {
        let m = parse_show("ActiveState=active\nDescription=a=b\nnoise\n");
        assert_eq!(m["ActiveState"], "active");
        assert_eq!(m["Description"], "a=b");
        assert_eq!(m.len(), 2);
    }
}
