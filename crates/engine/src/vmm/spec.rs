//! A VMM machine's configuration: what its start script (`run-<name>-firecracker`) prints on
//! stdout as one JSON object.
//!
//! ```json
//! {"kernel": "/path/vmlinux", "initrd": "/path/initrd" | null,
//!  "root_disk": "/path/root.img" | null, "root_read_only": false,
//!  "disks": [{"path": "/path/data.img", "read_only": true}],
//!  "cmdline": "console=ttyS0 ...", "vcpus": 1, "memory_mib": 512, "vlans": [1, 2]}
//! ```
//!
//! `kernel` and `cmdline` are required; the others default to `null`, `false`, `[]`, 1 vCPU,
//! 512 MiB and no VLANs. Relative paths are relative to the directory the script ran in (the
//! machine's state directory). Unknown keys, values of the wrong type and files that do not
//! exist are errors naming the script and the key.
//!
//! `--config` gives the same object inline in a machine's entry (`VmmSpec::from_object`, the
//! same parser; relative paths are then relative to the file's directory).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// What a machine's start script said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmSpec {
    /// The uncompressed kernel (Firecracker needs an ELF `vmlinux` on x86_64).
    pub kernel: PathBuf,
    /// The initrd, if any.
    pub initrd: Option<PathBuf>,
    /// The root disk, if any (the guest's `/dev/vda`).
    pub root_disk: Option<PathBuf>,
    /// The root disk is attached read-only.
    pub root_read_only: bool,
    /// Further disks, in order.
    pub disks: Vec<Disk>,
    /// The kernel's command line.
    pub cmdline: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The VLANs the machine has a NIC on, in NIC order.
    pub vlans: Vec<u32>,
}

/// A further disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Its image on the host (the user's file: writes go to it).
    pub path: PathBuf,
    /// Attached read-only.
    pub read_only: bool,
}

/// The keys of the object, for the unknown-key error.
pub const KEYS: &[&str] = &[
    "kernel",
    "initrd",
    "root_disk",
    "root_read_only",
    "disks",
    "cmdline",
    "vcpus",
    "memory_mib",
    "vlans",
];

/// Default vCPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory.
pub const DEFAULT_MEMORY_MIB: u32 = 512;

/// A bad configuration: where it came from (the script, or the `--config` entry), then what
/// is wrong, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct SpecError {
    pub origin: String,
    pub message: String,
}

struct Parser<'a> {
    source: &'a str,
    base: &'a Path,
    /// Keys the caller reads itself, allowed beside [`KEYS`].
    also: &'a [&'a str],
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> SpecError {
        SpecError {
            origin: self.source.to_string(),
            message: message.into(),
        }
    }

    fn path(&self, key: &str, v: &Value) -> Result<PathBuf, SpecError> {
        let text = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
            self.err(format!("`{key}`: expected a file path (a string), got {v}"))
        })?;
        let path = self.base.join(text);
        if !path.is_file() {
            return Err(self.err(format!(
                "`{key}`: {} does not exist or is not a file",
                path.display()
            )));
        }
        Ok(path)
    }

    fn optional_path(&self, key: &str, v: Option<&Value>) -> Result<Option<PathBuf>, SpecError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.path(key, v).map(Some),
        }
    }

    fn bool(&self, key: &str, v: Option<&Value>) -> Result<bool, SpecError> {
        match v {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(format!("`{key}`: expected true or false, got {v}"))),
        }
    }

    fn count(
        &self,
        key: &str,
        v: Option<&Value>,
        default: u32,
        max: u32,
    ) -> Result<u32, SpecError> {
        match v {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=u64::from(max)).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| self.err(format!("`{key}`: expected an integer 1-{max}, got {v}"))),
        }
    }

    fn disks(&self, v: Option<&Value>) -> Result<Vec<Disk>, SpecError> {
        let Some(v) = v else { return Ok(Vec::new()) };
        let list = v
            .as_array()
            .ok_or_else(|| self.err(format!("`disks`: expected a list of disks, got {v}")))?;
        list.iter()
            .enumerate()
            .map(|(i, d)| {
                let key = format!("disks[{i}]");
                let obj = d.as_object().ok_or_else(|| {
                    self.err(format!(
                        "`{key}`: expected an object {{\"path\": ..., \"read_only\": ...}}, got {d}"
                    ))
                })?;
                if let Some(k) = obj
                    .keys()
                    .find(|k| !["path", "read_only"].contains(&k.as_str()))
                {
                    return Err(self.err(format!(
                        "`{key}`: unknown key `{k}` (expected `path` and `read_only`)"
                    )));
                }
                let path = obj
                    .get("path")
                    .ok_or_else(|| self.err(format!("`{key}.path` is missing")))?;
                Ok(Disk {
                    path: self.path(&format!("{key}.path"), path)?,
                    read_only: self.bool(&format!("{key}.read_only"), obj.get("read_only"))?,
                })
            })
            .collect()
    }

    fn vlans(&self, v: Option<&Value>) -> Result<Vec<u32>, SpecError> {
        let Some(v) = v else { return Ok(Vec::new()) };
        let list = v.as_array().ok_or_else(|| {
            self.err(format!("`vlans`: expected a list of VLAN numbers, got {v}"))
        })?;
        let mut out = Vec::new();
        for item in list {
            let nr = item
                .as_u64()
                .filter(|n| (1..=255).contains(n))
                .ok_or_else(|| self.err(format!("`vlans`: expected integers 1-255, got {item}")))?
                as u32;
            if out.contains(&nr) {
                return Err(self.err(format!("`vlans`: VLAN {nr} is listed twice")));
            }
            out.push(nr);
        }
        Ok(out)
    }

    fn spec(&self, obj: &Map<String, Value>) -> Result<VmmSpec, SpecError> {
        let known = |k: &str| KEYS.contains(&k) || self.also.contains(&k);
        if let Some(k) = obj.keys().find(|k| !known(k)) {
            return Err(self.err(format!(
                "unknown key `{k}` (expected {})",
                self.also
                    .iter()
                    .chain(KEYS)
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let kernel = obj
            .get("kernel")
            .ok_or_else(|| self.err("`kernel` is missing (the path of the guest's kernel)"))?;
        let cmdline = match obj.get("cmdline") {
            None => return Err(self.err("`cmdline` is missing (the kernel's command line)")),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(self.err(format!("`cmdline`: expected a string, got {v}"))),
        };
        Ok(VmmSpec {
            kernel: self.path("kernel", kernel)?,
            initrd: self.optional_path("initrd", obj.get("initrd"))?,
            root_disk: self.optional_path("root_disk", obj.get("root_disk"))?,
            root_read_only: self.bool("root_read_only", obj.get("root_read_only"))?,
            disks: self.disks(obj.get("disks"))?,
            cmdline,
            vcpus: self.count("vcpus", obj.get("vcpus"), DEFAULT_VCPUS, 32)?,
            memory_mib: self.count(
                "memory_mib",
                obj.get("memory_mib"),
                DEFAULT_MEMORY_MIB,
                1 << 20,
            )?,
            vlans: self.vlans(obj.get("vlans"))?,
        })
    }
}

impl VmmSpec {
    /// Parses what start script `script` printed; relative paths are taken from `base`.
    pub fn parse(script: &str, output: &str, base: &Path) -> Result<VmmSpec, SpecError> {
        let source = format!("start script `{script}` printed a bad VMM configuration");
        let p = Parser {
            source: &source,
            base,
            also: &[],
        };
        let value: Value = serde_json::from_str(output.trim()).map_err(|e| {
            p.err(format!(
                "its output is not one JSON object ({e}); it printed {:?}",
                truncate(output.trim(), 200)
            ))
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| p.err(format!("expected one JSON object, got {value}")))?;
        p.spec(obj)
    }

    /// Reads the configuration object `obj`, which may also hold the keys `also` (the
    /// caller's own); errors start with `source`. Relative paths are taken from `base`.
    pub fn from_object(
        source: &str,
        obj: &Map<String, Value>,
        base: &Path,
        also: &[&str],
    ) -> Result<VmmSpec, SpecError> {
        Parser { source, base, also }.spec(obj)
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::test_dir::TestDir;

    fn files(dir: &Path) {
        for f in ["vmlinux", "initrd", "root.img", "data.img"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
    }

    fn parse(dir: &Path, text: &str) -> Result<VmmSpec, SpecError> {
        VmmSpec::parse("run-a-firecracker", text, dir)
    }

    fn err(dir: &Path, text: &str) -> String {
        parse(dir, text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_configuration() {
        let dir = TestDir::new();
        files(dir.path());
        let d = dir.path().display();
        let text = format!(
            r#"{{"kernel": "{d}/vmlinux", "initrd": "initrd", "root_disk": "{d}/root.img",
               "root_read_only": true, "disks": [{{"path": "data.img", "read_only": false}}],
               "cmdline": "console=ttyS0", "vcpus": 2, "memory_mib": 256, "vlans": [1, 3]}}"#
        );
        let spec = parse(dir.path(), &text).unwrap();
        assert_eq!(
            spec,
            VmmSpec {
                kernel: dir.path().join("vmlinux"),
                initrd: Some(dir.path().join("initrd")),
                root_disk: Some(dir.path().join("root.img")),
                root_read_only: true,
                disks: vec![Disk {
                    path: dir.path().join("data.img"),
                    read_only: false
                }],
                cmdline: "console=ttyS0".into(),
                vcpus: 2,
                memory_mib: 256,
                vlans: vec![1, 3],
            }
        );
    }

    #[test]
    fn defaults() {
        let dir = TestDir::new();
        files(dir.path());
        let spec = parse(
            dir.path(),
            r#"{"kernel": "vmlinux", "initrd": null, "root_disk": null, "cmdline": ""}"#,
        )
        .unwrap();
        assert_eq!(spec.initrd, None);
        assert_eq!(spec.root_disk, None);
        assert!(!spec.root_read_only);
        assert!(spec.disks.is_empty() && spec.vlans.is_empty());
        assert_eq!((spec.vcpus, spec.memory_mib), (1, 512));
    }

    #[test]
    fn bad_input_names_the_script_and_the_key() {
        let dir = TestDir::new();
        files(dir.path());
        let p = dir.path();
        let cases: &[(&str, &str)] = &[
            ("not json", "is not one JSON object"),
            ("[1]", "expected one JSON object"),
            (r#"{"cmdline": ""}"#, "`kernel` is missing"),
            (r#"{"kernel": "vmlinux"}"#, "`cmdline` is missing"),
            (
                r#"{"kernel": "vmlinux", "cmdline": 3}"#,
                "`cmdline`: expected a string",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "memory": 3}"#,
                "unknown key `memory` (expected `kernel`",
            ),
            (
                r#"{"kernel": 7, "cmdline": ""}"#,
                "`kernel`: expected a file path",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "vcpus": 0}"#,
                "`vcpus`: expected an integer 1-32, got 0",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "memory_mib": "big"}"#,
                "`memory_mib`: expected an integer",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "root_read_only": "yes"}"#,
                "`root_read_only`: expected true or false",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "vlans": [0]}"#,
                "`vlans`: expected integers 1-255, got 0",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "vlans": [2, 2]}"#,
                "VLAN 2 is listed twice",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "disks": [{"path": "data.img", "ro": true}]}"#,
                "`disks[0]`: unknown key `ro`",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "disks": [{"read_only": true}]}"#,
                "`disks[0].path` is missing",
            ),
            (
                r#"{"kernel": "vmlinux", "cmdline": "", "disks": {}}"#,
                "`disks`: expected a list",
            ),
        ];
        for (text, want) in cases {
            let e = err(p, text);
            assert!(
                e.starts_with("start script `run-a-firecracker` printed a bad VMM configuration: "),
                "{e}"
            );
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TestDir::new();
        files(dir.path());
        let e = err(dir.path(), r#"{"kernel": "bzImage", "cmdline": ""}"#);
        assert!(
            e.contains(&format!(
                "`kernel`: {} does not exist or is not a file",
                dir.path().join("bzImage").display()
            )),
            "{e}"
        );
        let e = err(
            dir.path(),
            r#"{"kernel": "vmlinux", "cmdline": "", "disks": [{"path": "/no/such.img"}]}"#,
        );
        assert!(
            e.contains("`disks[0].path`: /no/such.img does not exist"),
            "{e}"
        );
        let e = err(
            dir.path(),
            r#"{"kernel": "vmlinux", "cmdline": "", "root_disk": "gone.img"}"#,
        );
        assert!(e.contains("`root_disk`: "), "{e}");
    }
}
