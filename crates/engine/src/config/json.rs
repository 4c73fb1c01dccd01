//! Generation C's `--config FILE`: a JSON `DriverConfiguration`, plus this driver's own
//! `backend` field on a `vms` entry: `"qemu"` (the default), `"firecracker"` or
//! `"cloud-hypervisor"`, whose machine takes its VMM configuration inline (`vmm/spec.rs`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Config, MachineConfig, MachineKind};
use crate::error::{Error, Result};

const KNOWN_KEYS: &[&str] = &[
    "vms",
    "containers",
    "vlans",
    "global_timeout",
    "enable_ssh_backdoor",
    "test_script",
    "display_viewers",
];

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("invalid --config file `{}`: {msg}", path.display()))
}

/// Reads `path` and applies it to `cfg`.
pub fn apply_file(path: &Path, cfg: &mut Config) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(path, e))?;
    apply(path, &value, cfg)
}

fn apply(path: &Path, value: &Value, cfg: &mut Config) -> Result<()> {
    let obj = value
        .as_object()
        .ok_or_else(|| bad(path, "the top level must be a JSON object"))?;
    for key in obj.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            cfg.warnings.push(format!(
                "--config file `{}`: unknown key `{key}` ignored",
                path.display()
            ));
        }
    }
    for (section, kind) in [
        ("vms", MachineKind::Qemu),
        ("containers", MachineKind::Nspawn),
    ] {
        if let Some(v) = obj.get(section) {
            let machines = v
                .as_object()
                .ok_or_else(|| bad(path, format!("`{section}` must be an object of machines")))?;
            for (key, m) in machines {
                cfg.machines.push(machine(path, section, key, m, kind)?);
            }
        }
    }
    if let Some(v) = obj.get("vlans") {
        let list = v
            .as_array()
            .ok_or_else(|| bad(path, "`vlans` must be a list of integers"))?;
        for item in list {
            let nr = item
                .as_u64()
                .filter(|n| (1..=255).contains(n))
                .ok_or_else(|| {
                    bad(
                        path,
                        format!("`vlans` entry {item} is not an integer 1-255"),
                    )
                })? as u32;
            cfg.vlans.push(nr);
        }
    }
    // An inline machine's VLANs need their switches even when `vlans` forgot them.
    let inline_vlans = cfg.machines.iter().filter_map(|m| m.inline.as_ref());
    cfg.vlans
        .extend(inline_vlans.flat_map(|s| s.vlans.iter().copied()));
    super::dedup_vlans(&mut cfg.vlans);
    if let Some(v) = obj.get("global_timeout") {
        let text = match v {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return Err(bad(path, "`global_timeout` must be a number of seconds")),
        };
        cfg.global_timeout = super::cli::parse_seconds(&text, "`global_timeout`")
            .map_err(|e| bad(path, e))?
            .ok_or_else(|| bad(path, "`global_timeout` must be positive"))?;
    }
    if let Some(v) = obj.get("enable_ssh_backdoor") {
        cfg.enable_ssh_backdoor = v
            .as_bool()
            .ok_or_else(|| bad(path, "`enable_ssh_backdoor` must be true or false"))?;
    }
    if let Some(v) = obj.get("test_script") {
        let s = v
            .as_str()
            .ok_or_else(|| bad(path, "`test_script` must be a path"))?;
        cfg.test_script = Some(PathBuf::from(s));
    }
    Ok(())
}

/// The keys of a machine entry the entry itself reads (the VMM configuration's are
/// `vmm::spec::KEYS`).
const MACHINE_KEYS: &[&str] = &["name", "start_script", "backend"];

/// The `backend` values of a `vms` entry.
const BACKENDS: &[MachineKind] = &[
    MachineKind::Qemu,
    MachineKind::Firecracker,
    MachineKind::CloudHypervisor,
];

/// The machine of entry `section.key`: a start script (the `containers`, and QEMU VMs), or for
/// a `vms` entry with `"backend": "firecracker"` or `"cloud-hypervisor"` either a start script
/// or the VMM configuration inline (the start-script JSON's keys, read by the same code).
fn machine(
    path: &Path,
    section: &str,
    key: &str,
    m: &Value,
    kind: MachineKind,
) -> Result<MachineConfig> {
    let obj: &Map<String, Value> = m
        .as_object()
        .ok_or_else(|| bad(path, format!("`{section}.{key}` must be an object")))?;
    let name = match obj.get("name") {
        None => key.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(bad(
                path,
                format!("`{section}.{key}.name` must be a string"),
            ))
        }
    };
    let kind = match obj.get("backend") {
        None => kind,
        Some(v) if section == "vms" => backend(path, key, v)?,
        Some(_) => {
            return Err(bad(
                path,
                format!(
                    "`{section}.{key}.backend`: only `vms` entries choose a backend \
                     (a container is a systemd-nspawn machine)"
                ),
            ))
        }
    };
    let inline_keys: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| crate::vmm::spec::KEYS.contains(k))
        .collect();
    let script = obj.get("start_script");
    let takes_inline = matches!(
        kind,
        MachineKind::Firecracker | MachineKind::CloudHypervisor
    );
    if !takes_inline {
        if let Some(k) = inline_keys.first() {
            return Err(bad(
                path,
                format!(
                    "`{section}.{key}.{k}`: only a `firecracker` or `cloud-hypervisor` machine \
                     is configured inline; a {} machine needs `start_script`",
                    kind.backend_name()
                ),
            ));
        }
    }
    if takes_inline && script.is_none() {
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let origin = format!("machine `{name}` (`{section}.{key}`)");
        let spec = crate::vmm::VmmSpec::from_object(&origin, obj, &base, MACHINE_KEYS)
            .map_err(|e| bad(path, e))?;
        return Ok(MachineConfig {
            name,
            start_script: PathBuf::new(),
            kind,
            inline: Some(spec),
        });
    }
    if takes_inline && !inline_keys.is_empty() {
        return Err(bad(
            path,
            format!(
                "machine `{name}` (`{section}.{key}`) has both `start_script` and {}: give \
                 either the start script or the configuration inline",
                inline_keys
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let script = script.and_then(Value::as_str).ok_or_else(|| {
        bad(
            path,
            format!("`{section}.{key}.start_script` is missing or not a string"),
        )
    })?;
    Ok(MachineConfig {
        name,
        start_script: PathBuf::from(script),
        kind,
        inline: None,
    })
}

/// The kind a `backend` value names.
fn backend(path: &Path, key: &str, v: &Value) -> Result<MachineKind> {
    let names = || {
        BACKENDS
            .iter()
            .map(|k| format!("\"{}\"", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    v.as_str()
        .and_then(|s| BACKENDS.iter().find(|k| k.name() == s).copied())
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "`vms.{key}.backend`: unknown backend {v} (expected one of {})",
                    names()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_generation_c() {
        let mut cfg = Config::default();
        let v = json!({
            "vms": {"server": {"name": "server", "start_script": "/x/bin/run-server-vm"}},
            "containers": {"c1": {"name": "c1", "start_script": "/x/bin/run-c1-nspawn"}},
            "vlans": [2, 1, 2],
            "global_timeout": 3600,
            "enable_ssh_backdoor": false,
            "test_script": "/x/test-script",
            "extra": 1
        });
        apply(Path::new("c.json"), &v, &mut cfg).unwrap();
        assert_eq!(cfg.machines.len(), 2);
        assert_eq!(cfg.machines[1].kind, MachineKind::Nspawn);
        assert_eq!(cfg.vlans, vec![1, 2]);
        assert_eq!(cfg.global_timeout.as_secs(), 3600);
        assert!(cfg.warnings[0].contains("`extra`"));
    }

    #[test]
    fn errors_name_the_field() {
        let mut cfg = Config::default();
        let e = apply(Path::new("c.json"), &json!({"vms": {"a": {}}}), &mut cfg).unwrap_err();
        assert!(e.to_string().contains("vms.a.start_script"), "{e}");
        let e = apply(Path::new("c.json"), &json!({"vlans": ["x"]}), &mut cfg).unwrap_err();
        assert!(e.to_string().contains("vlans"), "{e}");
        let e = apply(Path::new("c.json"), &json!([1]), &mut cfg).unwrap_err();
        assert!(e.to_string().contains("top level"), "{e}");
    }

    #[test]
    fn a_file_alone_describes_a_run() {
        let path = std::env::temp_dir().join(format!("ntng-json-{}.json", std::process::id()));
        let text = r#"{"vms": {"a": {"start_script": "/x/run-a-vm"}}, "vlans": [3]}"#;
        std::fs::write(&path, text).unwrap();
        let cfg = crate::config::from_json_file(&path);
        std::fs::remove_file(&path).unwrap();
        let cfg = cfg.unwrap();
        assert_eq!(cfg.machines[0].name, "a");
        assert_eq!(cfg.vlans, vec![3]);
        let e = crate::config::from_json_file(&path).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
    /// `c.json` in a directory that also holds a kernel, an initrd and two disk images.
    fn vmm_files() -> crate::vmm::test_dir::TestDir {
        let dir = crate::vmm::test_dir::TestDir::new();
        for f in ["vmlinux", "initrd", "root.img", "data.img"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        dir
    }

    fn apply_in(dir: &Path, v: Value) -> Result<Config> {
        let mut cfg = Config::default();
        apply(&dir.join("c.json"), &v, &mut cfg)?;
        Ok(cfg)
    }

    #[test]
    fn a_vmm_machine_is_configured_inline() {
        let dir = vmm_files();
        let d = dir.path();
        let cfg = apply_in(
            d,
            json!({"vms": {
                "fc": {"backend": "firecracker", "kernel": "vmlinux", "initrd": "initrd",
                       "root_disk": "root.img", "root_read_only": true,
                       "disks": [{"path": "data.img", "read_only": false}],
                       "cmdline": "console=ttyS0", "vcpus": 2, "memory_mib": 256, "vlans": [1]},
                "ch": {"name": "hyper", "backend": "cloud-hypervisor",
                       "kernel": format!("{}/vmlinux", d.display()), "cmdline": ""},
                "q": {"backend": "qemu", "start_script": "/x/run-q-vm"},
            }}),
        )
        .unwrap();
        let by_name = |n: &str| cfg.machines.iter().find(|m| m.name == n).unwrap();
        let fc = by_name("fc");
        assert_eq!(fc.kind, MachineKind::Firecracker);
        assert_eq!(fc.start_script, PathBuf::new());
        assert_eq!(
            fc.inline,
            Some(crate::vmm::VmmSpec {
                kernel: d.join("vmlinux"),
                initrd: Some(d.join("initrd")),
                root_disk: Some(d.join("root.img")),
                root_read_only: true,
                disks: vec![crate::vmm::spec::Disk {
                    path: d.join("data.img"),
                    read_only: false,
                }],
                cmdline: "console=ttyS0".into(),
                vcpus: 2,
                memory_mib: 256,
                vlans: vec![1],
            })
        );
        let ch = by_name("hyper");
        assert_eq!(ch.kind, MachineKind::CloudHypervisor);
        let spec = ch.inline.as_ref().unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib), (1, 512));
        assert_eq!(spec.kernel, d.join("vmlinux"));
        let q = by_name("q");
        assert_eq!((q.kind, q.inline.is_none()), (MachineKind::Qemu, true));
        // the file's `vlans` did not list fc's VLAN: its switch is started all the same
        assert_eq!(cfg.vlans, vec![1]);
    }

    #[test]
    fn a_vmm_machine_may_have_a_start_script_instead() {
        let dir = vmm_files();
        let cfg = apply_in(
            dir.path(),
            json!({"vms": {"fc": {"backend": "firecracker",
                                  "start_script": "/x/run-fc-firecracker"}}}),
        )
        .unwrap();
        let m = &cfg.machines[0];
        assert_eq!(m.kind, MachineKind::Firecracker);
        assert_eq!(m.start_script, PathBuf::from("/x/run-fc-firecracker"));
        assert_eq!(m.inline, None);
    }

    #[test]
    fn bad_vmm_entries_name_the_machine_and_the_key() {
        let dir = vmm_files();
        let d = dir.path();
        let fc = |extra: Value| {
            let mut m = json!({"backend": "firecracker", "kernel": "vmlinux", "cmdline": ""});
            for (k, v) in extra.as_object().unwrap() {
                m[k] = v.clone();
            }
            json!({"vms": {"fc": m}})
        };
        let cases = [
            (
                json!({"vms": {"fc": {"backend": "xen", "kernel": "vmlinux"}}}),
                "`vms.fc.backend`: unknown backend \"xen\" (expected one of \"qemu\", \"firecracker\", \"cloud-hypervisor\")",
            ),
            (
                json!({"vms": {"fc": {"backend": 3}}}),
                "`vms.fc.backend`: unknown backend 3",
            ),
            (
                fc(json!({"memory": 3})),
                "machine `fc` (`vms.fc`): unknown key `memory` (expected `name`, `start_script`, `backend`, `kernel`",
            ),
            (
                json!({"vms": {"fc": {"backend": "cloud-hypervisor", "cmdline": ""}}}),
                "machine `fc` (`vms.fc`): `kernel` is missing",
            ),
            (
                fc(json!({"vcpus": "two"})),
                "machine `fc` (`vms.fc`): `vcpus`: expected an integer 1-32, got \"two\"",
            ),
            (
                fc(json!({"root_disk": "gone.img"})),
                &format!(
                    "machine `fc` (`vms.fc`): `root_disk`: {} does not exist or is not a file",
                    d.join("gone.img").display()
                ),
            ),
            (
                fc(json!({"start_script": "/x/run-fc-firecracker"})),
                "machine `fc` (`vms.fc`) has both `start_script` and `cmdline`, `kernel`: give \
                 either",
            ),
            (
                json!({"vms": {"q": {"start_script": "/x/run-q-vm", "kernel": "vmlinux"}}}),
                "`vms.q.kernel`: only a `firecracker` or `cloud-hypervisor` machine is configured inline; a QEMU machine needs `start_script`",
            ),
            (
                json!({"containers": {"c": {"backend": "firecracker", "start_script": "/x"}}}),
                "`containers.c.backend`: only `vms` entries choose a backend",
            ),
        ];
        for (v, want) in cases {
            let e = apply_in(d, v.clone()).unwrap_err().to_string();
            let prefix = format!("invalid --config file `{}`: ", d.join("c.json").display());
            assert!(e.starts_with(&prefix), "{e}");
            assert!(e.contains(want), "{v}:\n{e}\nwants: {want}");
        }
    }
}
