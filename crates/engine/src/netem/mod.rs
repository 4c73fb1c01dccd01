//! Network conditions and partitions, applied inside the guests with `tc`: the values and
//! their validation ([`values`]), and the shell commands that find a VLAN's interface by its
//! MAC address and change its queueing discipline or filters ([`commands`]). The machine and
//! driver methods that run them are in `machine/netem.rs` and `driver.rs`.

pub mod commands;
pub mod partition;
pub mod values;

pub use partition::Partitions;
pub use values::{Conditions, ConditionsInput, NetemError, Value};

/// The MAC address of node `node`'s NIC on VLAN `vlan`, as nixpkgs' network.nix and the
/// built-in guests' start scripts give it: `52:54:00:12:<vlan>:<node>`, both in hex.
pub fn vlan_mac(vlan: u32, node: u32) -> String {
    format!("52:54:00:12:{:02x}:{:02x}", vlan & 0xff, node & 0xff)
}

/// A VLAN number that fits the MAC address's byte (1..=255).
pub fn check_vlan(vlan: i64) -> Result<u32, NetemError> {
    if (1..=255).contains(&vlan) {
        Ok(vlan as u32)
    } else {
        Err(NetemError::new(
            "vlan",
            vlan.to_string(),
            "a VLAN is a number from 1 to 255",
        ))
    }
}
