//! Property tests of what configures a run: the command line with its environment, and
//! generation C's `--config` JSON. Any arguments, variables and files give a configuration,
//! help text, or a configuration error naming what was wrong, never a panic (a huge number
//! of seconds included).

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::cli::{parse_args, Parsed};
use super::from_json_file;
use crate::error::Error;
use crate::fuzz;
use crate::vmm::test_dir::TestDir;

/// Values that configuration fields meet: numbers of every shape, names, paths, noise.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "0.5",
            "1e300",
            "-1e300",
            "1e-300",
            "inf",
            "NaN",
            "255",
            "256",
            "4294967296",
            "18446744073709551616",
            "",
            " ",
            "qemu",
            "firecracker",
            "cloud-hypervisor",
            "nspawn",
            "agent",
            "backdoor",
            "vm",
            "vmlinux",
            "missing",
            "/",
            "/tmp",
            "info",
            "debug",
            "--",
            "-",
            "=",
        ])
        .prop_map(str::to_string),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[ -~]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn flag() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "-K",
        "--keep-machine-state",
        "--keep-vm-state",
        "-I",
        "--interactive",
        "--no-interactive",
        "--vnc",
        "--skip-check",
        "--keep-going",
        "--debug-hook-attach",
        "--start-scripts",
        "--vm-start-scripts",
        "--vm-names",
        "--container-names",
        "--container-start-scripts",
        "--vlans",
        "--global-timeout",
        "--boot-timeout",
        "--output_directory",
        "-o",
        "--junit-xml",
        "--html-report",
        "--no-html-report",
        "--dump-vsocks",
        "--config",
        "--log-level",
        "--help",
        "--version",
        "--glob",
        "-h",
    ])
    .prop_map(str::to_string)
}

fn env_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "startScripts",
        "vmStartScripts",
        "vmNames",
        "containerStartScripts",
        "containerNames",
        "vlans",
        "globalTimeout",
        "NIXOS_TEST_NG_BOOT_TIMEOUT",
        "NIXOS_TEST_NG_TRANSPORT",
        "LOGFILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_EXPORTER",
        "TRACEPARENT",
    ])
    .prop_map(str::to_string)
}

fn is_config_error(e: &Error) -> bool {
    matches!(e, Error::Config(m) if !m.is_empty())
}

#[test]
fn any_command_line_and_environment_parse_or_fail_clearly() {
    let arg = prop_oneof![
        flag(),
        word(),
        (flag(), word()).prop_map(|(f, w)| format!("{f}={w}"))
    ];
    let argv = proptest::collection::vec(arg, 0..10);
    let env = proptest::collection::hash_map(env_key(), word(), 0..5);
    proptest!(fuzz::config(256), |(argv in argv, env in env)| {
        let env: HashMap<String, String> = env;
        match parse_args(&argv, &env) {
            Ok(Parsed::Run(_)) => {}
            Ok(Parsed::Print(text)) => prop_assert!(!text.is_empty()),
            Err(e) => prop_assert!(is_config_error(&e), "{e:?}"),
        }
    });
}

/// A key of generation C's file, of a machine entry, of an inline VMM configuration, or any.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "vms",
            "containers",
            "vlans",
            "global_timeout",
            "enable_ssh_backdoor",
            "test_script",
            "display_viewers",
            "name",
            "start_script",
            "backend",
            "kernel",
            "initrd",
            "root_disk",
            "root_read_only",
            "disks",
            "cmdline",
            "vcpus",
            "memory_mib",
            "path",
            "read_only",
        ])
        .prop_map(str::to_string),
        "[a-z_]{0,8}",
    ]
}

/// JSON values, nested a few levels, made of the words above.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0.5f64, 1e300, 1e20, -1.0, 1e-300]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// For each top-level key, a value of the right shape (its numbers and names still any).
fn usable() -> impl Strategy<Value = Map<String, Value>> {
    let seconds = prop_oneof![
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![0.5f64, 1e300, 1e20, 0.0]).prop_map(Value::from),
        word().prop_map(Value::String),
    ];
    (
        seconds,
        machines(),
        machines(),
        proptest::collection::vec(any::<i16>(), 0..4),
    )
        .prop_map(|(seconds, vms, containers, vlans)| {
            let mut m = Map::new();
            m.insert("global_timeout".into(), seconds);
            m.insert("vms".into(), vms);
            m.insert("containers".into(), containers);
            m.insert("vlans".into(), vlans.into());
            m
        })
}

/// Machine entries: a start script or inline keys, any backend.
fn machines() -> impl Strategy<Value = Value> {
    proptest::collection::vec(
        ("[a-z]{1,4}", word(), word(), proptest::option::of(json())),
        0..3,
    )
    .prop_map(|ms| {
        let obj: Map<_, _> = ms
            .into_iter()
            .map(|(name, script, backend, kernel)| {
                let mut m = Map::new();
                m.insert("start_script".into(), script.into());
                m.insert("backend".into(), backend.into());
                if let Some(k) = kernel {
                    m.insert("kernel".into(), k);
                }
                (name, Value::Object(m))
            })
            .collect();
        Value::Object(obj)
    })
}

#[test]
fn any_config_file_applies_or_fails_naming_the_file() {
    let dir = TestDir::new();
    std::fs::write(dir.path().join("vmlinux"), "x").unwrap();
    let file = dir.path().join("config.json");
    // mostly objects of the file's own keys, often well-typed, so that every check is reached
    let top = proptest::collection::vec((key(), json(), usable()), 0..6).prop_map(|kv| {
        let obj: Map<_, _> = kv
            .into_iter()
            .map(|(k, any, usable)| {
                let v = usable.get(&k).cloned().unwrap_or(any);
                (k, v)
            })
            .collect();
        Value::Object(obj).to_string()
    });
    let text = prop_oneof![
        3 => top,
        1 => json().prop_map(|v| v.to_string()),
        1 => "[{}\\[\\]\":, 0-9a-z.eE+-]{0,64}",
        1 => proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    proptest!(fuzz::config(512), |(text in text)| {
        std::fs::write(&file, &text).unwrap();
        if let Err(e) = from_json_file(&file) {
            let named = matches!(&e, Error::Config(m) if m.starts_with("invalid --config file"));
            prop_assert!(named, "{e:?}");
        }
    });
}
