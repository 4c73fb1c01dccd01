//! Property tests of the VMM start script's JSON: whatever a script prints gives a
//! configuration or an error that names the script, never a panic.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{VmmSpec, KEYS};
use crate::fuzz;
use crate::vmm::test_dir::TestDir;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "vmlinux",
            "initrd",
            "missing",
            "",
            "/",
            "console=ttyS0"
        ])
        .prop_map(|s| Value::String(s.to_string())),
        "[ -~]{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select([KEYS, &["path", "read_only"]].concat()).prop_map(str::to_string),
        "[a-z_]{0,6}",
    ]
}

#[test]
fn any_start_script_output_parses_or_names_the_script() {
    let dir = TestDir::new();
    for f in ["vmlinux", "initrd"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let object = proptest::collection::vec((key(), value()), 0..8).prop_map(|kv| {
        let mut obj: Map<String, Value> = kv.into_iter().collect();
        obj.entry("kernel").or_insert_with(|| "vmlinux".into());
        Value::Object(obj).to_string()
    });
    let output = prop_oneof![
        object,
        value().prop_map(|v| v.to_string()),
        "[{}\\[\\]\":, 0-9a-z.eE+-]{0,64}",
    ];
    proptest!(fuzz::config(512), |(output in output)| {
        match VmmSpec::parse("start-vm", &output, dir.path()) {
            Ok(spec) => {
                prop_assert!(spec.kernel.is_file());
                prop_assert!(spec.vcpus >= 1 && spec.memory_mib >= 1);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("start script `start-vm`"), "{e}"),
        }
    });
}
