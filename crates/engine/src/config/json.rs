//! Generation C's `--config FILE`: a JSON `DriverConfiguration`.

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
        super::dedup_vlans(&mut cfg.vlans);
    }
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
    let script = obj
        .get("start_script")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(
                path,
                format!("`{section}.{key}.start_script` is missing or not a string"),
            )
        })?;
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
    Ok(MachineConfig {
        name,
        start_script: PathBuf::from(script),
        kind,
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
}
