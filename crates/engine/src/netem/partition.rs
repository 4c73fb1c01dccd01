//! Partitions of a VLAN: machines in different groups cannot exchange frames on it, machines
//! in one group still can; machines named in no group keep reaching everyone. Each machine
//! drops, on its VLAN interface's ingress, the frames from the other groups' MAC addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::{check_vlan, NetemError};
use crate::error::Result;
use crate::log::Logger;
use crate::machine::Machine;
use crate::trace::{SpanId, SpanKind, SpanStatus};

/// The report's band of each partitioned VLAN.
#[derive(Default)]
pub struct Partitions {
    bands: Mutex<BTreeMap<u32, SpanId>>,
}

/// Checks the groups: at least two, none empty, no machine twice.
pub fn check_groups(groups: &[Vec<Arc<Machine>>]) -> Result<(), NetemError> {
    let shown = || {
        let names: Vec<String> = groups
            .iter()
            .map(|g| {
                let n: Vec<&str> = g.iter().map(|m| m.name()).collect();
                format!("[{}]", n.join(", "))
            })
            .collect();
        format!("[{}]", names.join(", "))
    };
    if groups.len() < 2 {
        return Err(NetemError::new(
            "groups",
            shown(),
            "a partition needs at least two groups of machines",
        ));
    }
    if groups.iter().any(|g| g.is_empty()) {
        return Err(NetemError::new("groups", shown(), "a group is empty"));
    }
    let mut seen = BTreeSet::new();
    for m in groups.iter().flatten() {
        if !seen.insert(m.name()) {
            return Err(NetemError::new(
                "groups",
                shown(),
                format!("machine {} is in more than one group", m.name()),
            ));
        }
    }
    Ok(())
}

fn describe(groups: &[Vec<Arc<Machine>>]) -> String {
    groups
        .iter()
        .map(|g| {
            let n: Vec<&str> = g.iter().map(|m| m.name()).collect();
            format!("{{{}}}", n.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

impl Partitions {
    /// Partitions `vlan` into `groups`; an earlier partition of it is healed first on
    /// `others` (the driver's running machines), so only the new one is in force.
    pub fn partition(
        &self,
        logger: &Logger,
        groups: &[Vec<Arc<Machine>>],
        vlan: i64,
        others: &[Arc<Machine>],
    ) -> Result<()> {
        let vlan = check_vlan(vlan)?;
        check_groups(groups)?;
        let shown = describe(groups);
        let block = logger.nested(&format!("partitioning VLAN {vlan}: {shown}"), None);
        let members: BTreeSet<&str> = groups.iter().flatten().map(|m| m.name()).collect();
        for m in others
            .iter()
            .filter(|m| m.is_up() && !members.contains(m.name()))
        {
            block.check(m.heal_partition(Some(vlan)))?;
        }
        for (i, group) in groups.iter().enumerate() {
            let foreign: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, g)| g.iter().map(|m| m.vlan_mac(vlan)))
                .collect();
            for m in group {
                if let Err(e) = m.isolate_from(vlan, &foreign) {
                    // no half-made partition: undo what the machines before got
                    for done in groups.iter().flatten().filter(|m| m.is_up()) {
                        let _ = done.heal_partition(Some(vlan));
                    }
                    return Err(block.fail_with(e));
                }
            }
        }
        let id = logger.begin_detached(
            SpanKind::Network,
            &format!("VLAN {vlan} partitioned: {shown}"),
            None,
        );
        logger.span_attr(id, "nixos_test.vlan", i64::from(vlan).into());
        if let Some(old) = self.bands.lock().unwrap().insert(vlan, id) {
            logger.end_span(old, SpanStatus::Ok);
        }
        block.finish();
        Ok(())
    }

    /// Heals the partition of `vlan`, or of every VLAN (None), on `machines` that are up.
    pub fn heal(
        &self,
        logger: &Logger,
        vlan: Option<i64>,
        machines: &[Arc<Machine>],
    ) -> Result<()> {
        let vlan = vlan.map(check_vlan).transpose()?;
        let what = match vlan {
            Some(v) => format!("VLAN {v}"),
            None => "every VLAN".to_string(),
        };
        let block = logger.nested(&format!("healing the partition of {what}"), None);
        for m in machines.iter().filter(|m| m.is_up()) {
            block.check(m.heal_partition(vlan))?;
        }
        let mut bands = self.bands.lock().unwrap();
        let healed: Vec<u32> = bands
            .keys()
            .copied()
            .filter(|v| vlan.is_none_or(|want| want == *v))
            .collect();
        for v in healed {
            if let Some(id) = bands.remove(&v) {
                logger.end_span(id, SpanStatus::Ok);
            }
        }
        block.finish();
        Ok(())
    }
}
