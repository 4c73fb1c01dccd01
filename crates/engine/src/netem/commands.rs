//! The shell commands run in a guest (a POSIX shell with iproute2's `tc`).
//!
//! The interface is the one whose MAC address is the VLAN's (`52:54:00:12:<vlan>:<node>`),
//! found in `/sys/class/net`, never guessed by name. Conditions are a `netem` root qdisc
//! (egress: they delay or drop what the machine sends). A partition is a `clsact` qdisc (added
//! when missing) with ingress `flower` filters at priority [`PARTITION_PREF`] that drop the
//! frames from the other side's MAC addresses, so a netem root qdisc and a partition coexist;
//! healing deletes the filters of that priority only, and the `clsact` qdisc when no filter
//! is left on it.

use super::Conditions;

/// The priority of the partition's filters: healing deletes these, nothing else.
pub const PARTITION_PREF: u32 = 49213;

/// Exit status of a script that found no interface with the MAC address.
pub const NO_INTERFACE: i32 = 83;
/// Exit status of a script that found no `tc`.
pub const NO_TC: i32 = 84;
/// The MAC prefix of every VLAN interface.
pub const VLAN_MAC_PREFIX: &str = "52:54:00:12:";

/// Sets `dev` to the interface with `mac`, or exits with [`NO_INTERFACE`].
fn find_interface(mac: &str) -> String {
    format!(
        "{need_tc}\
         dev=\n\
         for a in /sys/class/net/*/address; do\n\
         \x20 read -r m < \"$a\" || continue\n\
         \x20 if [ \"$m\" = {mac} ]; then dev=${{a%/address}}; dev=${{dev##*/}}; break; fi\n\
         done\n\
         if [ -z \"$dev\" ]; then echo \"no interface has the MAC address {mac}\" >&2; exit {NO_INTERFACE}; fi\n",
        need_tc = need_tc(),
    )
}

fn need_tc() -> String {
    format!(
        "command -v tc >/dev/null 2>&1 || {{ echo 'no tc (iproute2) in the guest' >&2; exit {NO_TC}; }}\n"
    )
}

/// Runs `body` (which uses `$dev`) for every VLAN interface (MAC `52:54:00:12:...`).
fn for_each_vlan_interface(body: &str) -> String {
    format!(
        "{need_tc}\
         for a in /sys/class/net/*/address; do\n\
         \x20 read -r m < \"$a\" || continue\n\
         \x20 case \"$m\" in {VLAN_MAC_PREFIX}*) ;; *) continue ;; esac\n\
         \x20 dev=${{a%/address}}; dev=${{dev##*/}}\n\
         {body}\
         done\n",
        need_tc = need_tc(),
    )
}

/// Replaces the root qdisc of the interface with `mac` by netem with `conditions`.
pub fn set_conditions(mac: &str, conditions: &Conditions) -> String {
    format!(
        "{}tc qdisc replace dev \"$dev\" root netem {}\n",
        find_interface(mac),
        conditions.netem_args().join(" ")
    )
}

/// Deletes the interface's root qdisc when it is netem (whatever else is there stays).
const CLEAR_BODY: &str =
    "  if tc qdisc show dev \"$dev\" root | grep -q '^qdisc netem '; then\n    \
                          tc qdisc del dev \"$dev\" root || exit $?\n  fi\n";

/// Removes the netem root qdisc of the interface with `mac`, or (None) of every VLAN interface.
pub fn clear_conditions(mac: Option<&str>) -> String {
    match mac {
        Some(mac) => format!("{}{CLEAR_BODY}", find_interface(mac)),
        None => for_each_vlan_interface(CLEAR_BODY),
    }
}

fn heal_body() -> String {
    format!(
        "  tc filter del dev \"$dev\" ingress pref {PARTITION_PREF} 2>/dev/null\n  \
         if tc qdisc show dev \"$dev\" | grep -q '^qdisc clsact ' \\\n    \
         && [ -z \"$(tc filter show dev \"$dev\" ingress)$(tc filter show dev \"$dev\" egress)\" ]; then\n    \
         tc qdisc del dev \"$dev\" clsact || exit $?\n  fi\n"
    )
}

/// Makes the interface with `mac` drop every frame from `drop_macs` (replacing the drops of
/// an earlier partition). No MAC to drop heals the interface.
pub fn partition(mac: &str, drop_macs: &[String]) -> String {
    let mut s = find_interface(mac);
    s.push_str(&heal_body());
    if drop_macs.is_empty() {
        return s;
    }
    s.push_str(
        "tc qdisc show dev \"$dev\" | grep -q '^qdisc clsact ' || tc qdisc add dev \"$dev\" clsact || exit $?\n",
    );
    for m in drop_macs {
        s.push_str(&format!(
            "tc filter add dev \"$dev\" ingress pref {PARTITION_PREF} protocol all flower src_mac {m} action drop || exit $?\n"
        ));
    }
    s
}

/// Removes the partition's filters from the interface with `mac`, or (None) from every VLAN
/// interface.
pub fn heal(mac: Option<&str>) -> String {
    match mac {
        Some(mac) => format!("{}{}", find_interface(mac), heal_body()),
        None => for_each_vlan_interface(&heal_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netem::{vlan_mac, ConditionsInput, Value};

    #[test]
    fn the_mac_is_the_vlans_in_hex() {
        assert_eq!(vlan_mac(1, 2), "52:54:00:12:01:02");
        assert_eq!(vlan_mac(20, 11), "52:54:00:12:14:0b");
    }

    #[test]
    fn set_finds_the_interface_by_mac_and_replaces_the_root_qdisc() {
        let c = ConditionsInput {
            delay: Some(Value::Text("200ms".into())),
            loss: Some(Value::Number(0.25)),
            ..Default::default()
        }
        .check()
        .unwrap();
        let s = set_conditions("52:54:00:12:01:02", &c);
        assert!(s.contains("if [ \"$m\" = 52:54:00:12:01:02 ]"), "{s}");
        assert!(s.contains(&format!("exit {NO_INTERFACE}")), "{s}");
        assert!(s.contains(&format!("exit {NO_TC}")), "{s}");
        assert!(
            s.ends_with("tc qdisc replace dev \"$dev\" root netem delay 200000us loss 25%\n"),
            "{s}"
        );
    }

    #[test]
    fn clear_deletes_only_a_netem_root() {
        let one = clear_conditions(Some("52:54:00:12:01:02"));
        assert!(one.contains("grep -q '^qdisc netem '"), "{one}");
        assert!(one.contains("tc qdisc del dev \"$dev\" root"), "{one}");
        let all = clear_conditions(None);
        assert!(all.contains("case \"$m\" in 52:54:00:12:*)"), "{all}");
        assert!(!all.contains(&format!("exit {NO_INTERFACE}")), "{all}");
    }

    #[test]
    fn partition_drops_each_mac_at_its_own_priority() {
        let s = partition(
            "52:54:00:12:01:03",
            &["52:54:00:12:01:01".into(), "52:54:00:12:01:02".into()],
        );
        // an earlier partition's filters go first, then clsact is added when missing
        let del = s
            .find("tc filter del dev \"$dev\" ingress pref 49213")
            .unwrap();
        let add = s.find("tc qdisc add dev \"$dev\" clsact").unwrap();
        assert!(del < add, "{s}");
        for m in ["52:54:00:12:01:01", "52:54:00:12:01:02"] {
            assert!(
                s.contains(&format!(
                    "tc filter add dev \"$dev\" ingress pref 49213 protocol all flower src_mac {m} action drop"
                )),
                "{s}"
            );
        }
        assert!(
            !s.contains("root"),
            "a partition leaves the root qdisc alone: {s}"
        );
    }

    #[test]
    fn heal_deletes_its_priority_and_an_empty_clsact() {
        let s = heal(Some("52:54:00:12:01:03"));
        assert!(
            s.contains("tc filter del dev \"$dev\" ingress pref 49213"),
            "{s}"
        );
        assert!(s.contains("tc qdisc del dev \"$dev\" clsact"), "{s}");
        assert!(s.contains("tc filter show dev \"$dev\" ingress"), "{s}");
        assert!(!s.contains("root"), "{s}");
        assert!(heal(None).contains("case \"$m\" in 52:54:00:12:*)"));
    }

    #[test]
    fn scripts_parse_as_shell() {
        let c = ConditionsInput {
            rate: Some(Value::Text("1mbit".into())),
            ..Default::default()
        }
        .check()
        .unwrap();
        for s in [
            set_conditions("52:54:00:12:01:02", &c),
            clear_conditions(None),
            clear_conditions(Some("52:54:00:12:01:02")),
            partition("52:54:00:12:01:02", &["52:54:00:12:01:01".into()]),
            heal(None),
            heal(Some("52:54:00:12:01:02")),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{s}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
