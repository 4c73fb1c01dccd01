//! Network conditions over the fake backend (a local bash as the guest): invalid values never
//! reach the guest, and a guest without the VLAN's interface gets a clear error.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::tests::machine_over;
use crate::config::Transport;
use crate::error::Error;
use crate::fake::FakeBackend;
use crate::netem::{ConditionsInput, Value};

fn machine(before: &str) -> super::tests::Fixture {
    machine_over(
        FakeBackend::new(before),
        Some(Duration::from_secs(30)),
        Transport::Auto,
    )
}

#[test]
fn invalid_values_raise_before_the_machine_is_even_started() {
    let f = machine("true");
    let bad = ConditionsInput {
        loss: Some(Value::Number(2.0)),
        ..Default::default()
    };
    match f.m.set_network_conditions(1, &bad) {
        Err(Error::NetworkCondition(e)) => {
            assert_eq!((e.field.as_str(), e.value.as_str()), ("loss", "2"))
        }
        other => panic!("{other:?}"),
    }
    let good = ConditionsInput {
        delay: Some(Value::Text("10ms".into())),
        ..Default::default()
    };
    for vlan in [0, 256, -1] {
        match f.m.set_network_conditions(vlan, &good) {
            Err(Error::NetworkCondition(e)) => assert_eq!(e.field, "vlan"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        f.m.clear_network_conditions(Some(0)),
        Err(Error::NetworkCondition(_))
    ));
    assert_eq!(f.record.launches.load(Ordering::SeqCst), 0);
}

#[test]
fn a_guest_without_the_vlans_mac_says_so() {
    // a `tc` that does nothing: the host's interfaces have no 52:54:00:12:01:01
    let f = machine("tc() { :; }; export -f tc");
    let c = ConditionsInput {
        delay: Some(Value::Number(0.1)),
        ..Default::default()
    };
    match f.m.set_network_conditions(1, &c) {
        Err(Error::Network { machine, message }) => {
            assert_eq!(machine, "m");
            assert!(message.contains("no interface on VLAN 1"), "{message}");
            assert!(message.contains("52:54:00:12:01:01"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // nothing to clear on no VLAN interface is not an error
    f.m.clear_network_conditions(None).unwrap();
    f.m.heal_partition(None).unwrap();
}
