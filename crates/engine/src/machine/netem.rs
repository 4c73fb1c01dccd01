//! Network conditions on a machine's VLAN interface, and its half of a partition (the
//! driver's `partition` gives each machine the MAC addresses to drop). The values are
//! checked before anything is sent; the commands are `crate::netem::commands`.

use super::{ExecOptions, Machine};
use crate::error::{Error, Result};
use crate::netem::{check_vlan, commands, vlan_mac, Conditions, ConditionsInput};
use crate::trace::{SpanKind, SpanStatus};
use crate::transport::shell::shell_quote;

impl Machine {
    /// The MAC address of this machine's NIC on `vlan`.
    pub fn vlan_mac(&self, vlan: u32) -> String {
        vlan_mac(vlan, self.info.node)
    }

    /// Sets the conditions of what the machine sends on `vlan` (egress), replacing earlier
    /// ones there. Returns the checked conditions.
    pub fn set_network_conditions(&self, vlan: i64, input: &ConditionsInput) -> Result<Conditions> {
        let vlan = check_vlan(vlan)?;
        let conditions = input.check()?;
        let mac = self.vlan_mac(vlan);
        let block = self.op(
            "set_network_conditions",
            &format!("setting network conditions on VLAN {vlan} ({mac}, egress): {conditions}"),
        );
        block.attr("nixos_test.vlan", i64::from(vlan));
        block.attr(
            "nixos_test.network_conditions",
            conditions.to_string().as_str(),
        );
        block.check(
            self.run_network_script(&commands::set_conditions(&mac, &conditions), Some(vlan)),
        )?;
        self.begin_band(vlan, &format!("VLAN {vlan}: {conditions}"));
        block.finish();
        Ok(conditions)
    }

    /// Removes the conditions set on `vlan`, or on every VLAN (None). A VLAN without
    /// conditions is left as it is.
    pub fn clear_network_conditions(&self, vlan: Option<i64>) -> Result<()> {
        let vlan = vlan.map(check_vlan).transpose()?;
        let mac = vlan.map(|v| self.vlan_mac(v));
        let what = match vlan {
            Some(v) => format!("VLAN {v}"),
            None => "every VLAN".to_string(),
        };
        let block = self.op(
            "clear_network_conditions",
            &format!("clearing network conditions on {what}"),
        );
        block.check(self.run_network_script(&commands::clear_conditions(mac.as_deref()), vlan))?;
        self.end_bands(vlan);
        block.finish();
        Ok(())
    }

    /// Drops every frame that arrives on `vlan` from `drop_macs` (replacing the drops of an
    /// earlier partition); none heals the VLAN.
    pub(crate) fn isolate_from(&self, vlan: u32, drop_macs: &[String]) -> Result<()> {
        let script = commands::partition(&self.vlan_mac(vlan), drop_macs);
        self.run_network_script(&script, Some(vlan))
    }

    /// Removes a partition's drops on `vlan`, or on every VLAN (None).
    pub(crate) fn heal_partition(&self, vlan: Option<u32>) -> Result<()> {
        let mac = vlan.map(|v| self.vlan_mac(v));
        self.run_network_script(&commands::heal(mac.as_deref()), vlan)
    }

    /// Runs a script of `commands` (with its stderr in the output) and turns its failure
    /// into an error that says what is missing.
    fn run_network_script(&self, script: &str, vlan: Option<u32>) -> Result<()> {
        // bash, not sh: busybox's sh would run its own `tc` applet before the one on PATH
        let command = format!("bash -c {} 2>&1", shell_quote(script));
        let (status, output) = self.run_command(
            &command,
            ExecOptions {
                check_return: true,
                check_output: true,
                ..Default::default()
            },
        )?;
        let output = output.trim();
        let message = match status {
            0 => return Ok(()),
            commands::NO_INTERFACE => format!(
                "no interface on VLAN {} (no NIC has the MAC address {}): is the machine on \
                 that VLAN?",
                vlan.unwrap_or_default(),
                self.vlan_mac(vlan.unwrap_or_default()),
            ),
            commands::NO_TC => {
                "the guest has no `tc` (iproute2): add pkgs.iproute2 to the machine".to_string()
            }
            _ => {
                let mut m = format!("tc failed (exit code {status}): {output}");
                let lower = output.to_ascii_lowercase();
                if ["unknown", "not supported", "not found"]
                    .iter()
                    .any(|w| lower.contains(w))
                {
                    m.push_str(
                        "\nthe kernel lacks a module of sch_netem, sch_ingress (clsact), \
                         cls_flower, act_gact",
                    );
                    if self.backend.container().is_some() {
                        m.push_str(&format!(
                            " (a {} uses the host's kernel: load them on the host, or build \
                             them into its kernel)",
                            self.kind().noun()
                        ));
                    }
                }
                m
            }
        };
        Err(Error::Network {
            machine: self.name().to_string(),
            message,
        })
    }

    fn begin_band(&self, vlan: u32, name: &str) {
        let logger = &self.info.logger;
        let id = logger.begin_detached(SpanKind::Network, name, Some(self.name()));
        logger.span_attr(id, "nixos_test.vlan", i64::from(vlan).into());
        if let Some(old) = self.network_bands.lock().unwrap().insert(vlan, id) {
            logger.end_span(old, SpanStatus::Ok);
        }
    }

    fn end_bands(&self, vlan: Option<u32>) {
        let mut bands = self.network_bands.lock().unwrap();
        let ended: Vec<u32> = bands
            .keys()
            .copied()
            .filter(|v| vlan.is_none_or(|want| want == *v))
            .collect();
        for v in ended {
            if let Some(id) = bands.remove(&v) {
                self.info.logger.end_span(id, SpanStatus::Ok);
            }
        }
    }
}
