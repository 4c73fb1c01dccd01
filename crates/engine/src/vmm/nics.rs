//! A VMM machine's VLAN NICs: made on first use from the start script's `vlans`, kept across
//! launches (a restored or rebooted guest reopens the same TAPs), dropped when the machine is
//! released; their link state is `block`/`unblock`.

use std::sync::{Arc, Mutex};

use crate::backend::MachineInfo;
use crate::error::{Error, Result};
use crate::vmm::tap::{self, Netns, Tap};

/// A NIC: the host's TAP and the guest's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

struct Network {
    ns: Arc<Netns>,
    taps: Vec<Tap>,
}

/// The machine's VLAN NICs, if any.
#[derive(Default)]
pub struct VlanNics(Mutex<Option<Network>>);

impl VlanNics {
    /// The NICs of `vlans`, made (or remade, when the VLANs changed) as needed.
    pub fn ensure(&self, info: &MachineInfo, vlans: &[u32]) -> Result<Vec<Nic>> {
        let mut network = self.0.lock().unwrap();
        let fits = network
            .as_ref()
            .is_some_and(|n| n.taps.iter().map(|t| t.vlan).eq(vlans.iter().copied()));
        if !fits {
            *network = None;
            if !vlans.is_empty() {
                let net_err =
                    |e: tap::TapError| Error::Config(format!("machine `{}`: {e}", info.name));
                tap::check(vlans, &info.env).map_err(net_err)?;
                let ns = Netns::shared().map_err(net_err)?;
                let taps = vlans
                    .iter()
                    .map(|&v| {
                        let switch = tap::switch_dir(&info.env, v).expect("checked");
                        tap::plug(&ns, v, info.node, &switch)
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(net_err)?;
                *network = Some(Network { ns, taps });
            }
        }
        Ok(network
            .as_ref()
            .map(|n| {
                n.taps
                    .iter()
                    .map(|t| Nic {
                        tap: t.name.clone(),
                        mac: t.mac.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The namespace the VMM runs in, when there are NICs.
    pub fn netns(&self) -> Option<Arc<Netns>> {
        self.0.lock().unwrap().as_ref().map(|n| n.ns.clone())
    }

    /// Drops the NICs (the machine is released).
    pub fn release(&self) {
        self.0.lock().unwrap().take();
    }

    /// The first VLAN NIC's TAP, down or up, in the run's network namespace.
    pub fn set_link(&self, info: &MachineInfo, up: bool) -> Result<()> {
        let network = self.0.lock().unwrap();
        let Some((ns, tap)) = network
            .as_ref()
            .and_then(|n| n.taps.first().map(|t| (&n.ns, t)))
        else {
            return Err(Error::InvalidState {
                machine: info.name.clone(),
                message: "the machine has no VLAN NIC (its start script lists no `vlans`)"
                    .to_string(),
            });
        };
        ns.set_link(&tap.name, up)
            .map_err(|e| Error::Config(format!("machine `{}`: {e}", info.name)))
    }
}
