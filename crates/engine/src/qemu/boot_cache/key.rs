//! The key of a cache entry: a hash of everything that can change what the guest is, and the
//! same inputs in readable form (kept in the entry's manifest).
//!
//! Files the start script names (absolute paths in its text that are files, and the QEMU
//! binary it runs, found on `PATH`) count by their path when they live in `/nix/store` (a
//! store path's name changes with its content), else by path, size and modification time.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The environment variables of the start-script contract that shape the guest.
pub const KEY_ENV: &[&str] = &[
    "QEMU_OPTS",
    "QEMU_KERNEL_PARAMS",
    "QEMU_NET_OPTS",
    "NIXOS_TEST_NG_ACCEL",
];

/// Everything a key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInputs {
    /// The start script's content (or the command line, for one given as a string).
    pub start_script: String,
    /// The files it names, each as `path` (a store path) or `path size mtime_ns`.
    pub files: Vec<String>,
    /// The QEMU binary, as a file above (`None`: not found).
    pub qemu: Option<String>,
    /// The arguments the driver appends, with the per-run directory replaced by `$STATE`.
    pub appended: Vec<String>,
    /// [`KEY_ENV`] and `NIXPKGS_QEMU_KERNEL_<name>`, unset ones included.
    pub env: Vec<(String, Option<String>)>,
    /// The machine's VLANs.
    pub vlans: Vec<u32>,
    /// Its node number (the last byte of its MACs).
    pub node: u32,
    /// nixos-test-ng's version.
    pub version: String,
}

impl KeyInputs {
    /// The inputs, one readable line each (what the key hashes).
    pub fn readable(&self) -> Vec<String> {
        let mut lines = vec![
            format!("version {}", self.version),
            format!(
                "start script ({} bytes) {:032x}",
                self.start_script.len(),
                fnv128(self.start_script.as_bytes())
            ),
        ];
        lines.extend(self.files.iter().map(|f| format!("file {f}")));
        lines.push(format!(
            "qemu {}",
            self.qemu.as_deref().unwrap_or("(not found)")
        ));
        lines.push(format!("appended {}", self.appended.join(" ")));
        for (k, v) in &self.env {
            match v {
                Some(v) => lines.push(format!("env {k}={v}")),
                None => lines.push(format!("env {k} unset")),
            }
        }
        let vlans: Vec<String> = self.vlans.iter().map(u32::to_string).collect();
        lines.push(format!("vlans {}", vlans.join(",")));
        lines.push(format!("node {}", self.node));
        lines
    }

    /// The key: 32 hex digits.
    pub fn key(&self) -> String {
        format!("{:032x}", fnv128(self.readable().join("\n").as_bytes()))
    }
}

/// FNV-1a, 128 bits: enough to tell inputs apart (not meant to resist an adversary, who
/// could write the cache directory anyway).
pub fn fnv128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// A file as a key input: its path alone for a store path, else path, size and mtime.
pub fn file_id(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if path.starts_with("/nix/store") {
        return Some(path.display().to_string());
    }
    let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    Some(format!("{} {} {mtime}", path.display(), meta.len()))
}

/// The absolute paths of existing files in a script's text, sorted, each once.
pub fn named_files(text: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .split(|c: char| c.is_whitespace() || "\"'=,:;(){}<>|&`$".contains(c))
        // `${VAR:-/default}`
        .map(|t| t.trim_start_matches(['-', '+', '?']))
        .filter(|t| t.starts_with('/') && t.len() > 1)
        .filter_map(|t| file_id(Path::new(t)))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The QEMU binary a script runs: the first `qemu-system-*` word, looked up on `PATH`
/// unless it is a path.
pub fn qemu_binary(text: &str) -> Option<String> {
    let word = text
        .split(|c: char| c.is_whitespace() || "\"'=;(){}|&`".contains(c))
        .find(|t| {
            Path::new(t)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("qemu-system-"))
        })?;
    if word.starts_with('/') {
        return file_id(Path::new(word));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| file_id(&dir.join(word)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> KeyInputs {
        KeyInputs {
            start_script: "exec qemu-system-x86_64 -m 256".into(),
            files: vec!["/guest/vmlinux 10 20".into()],
            qemu: Some("/usr/bin/qemu-system-x86_64 5 6".into()),
            appended: vec!["-qmp".into(), "unix:$STATE/qmp".into()],
            env: vec![("QEMU_OPTS".into(), None)],
            vlans: vec![1],
            node: 1,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn every_input_changes_the_key() {
        let key = base().key();
        assert_eq!(key.len(), 32);
        assert_eq!(key, base().key(), "the key is stable");
        type Change = fn(&mut KeyInputs);
        let changes: Vec<(&str, Change)> = vec![
            ("start script", |k| k.start_script.push(' ')),
            ("file mtime", |k| k.files[0] = "/guest/vmlinux 10 21".into()),
            ("file added", |k| k.files.push("/guest/initrd 1 1".into())),
            ("qemu", |k| {
                k.qemu = Some("/usr/bin/qemu-system-x86_64 5 7".into())
            }),
            ("appended", |k| k.appended.push("-no-reboot".into())),
            ("env set", |k| k.env[0].1 = Some("-smp 2".into())),
            ("env empty", |k| k.env[0].1 = Some(String::new())),
            ("vlans", |k| k.vlans.push(2)),
            ("node", |k| k.node = 2),
            ("version", |k| k.version = "0.2.0".into()),
        ];
        for (what, change) in changes {
            let mut k = base();
            change(&mut k);
            assert_ne!(k.key(), key, "{what} must change the key");
        }
    }

    #[test]
    fn files_named_by_a_script() {
        let dir = std::env::temp_dir().join(format!("ntng-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"kernel").unwrap();
        let text = format!(
            "kernel=${{K:-{}}}\n-virtfs path={}\n",
            kernel.display(),
            dir.display()
        );
        let files = named_files(&text);
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(
            files[0].starts_with(&format!("{} 6 ", kernel.display())),
            "{files:?}"
        );
        let before = files[0].clone();
        std::fs::write(&kernel, b"kernel2").unwrap();
        assert_ne!(named_files(&text)[0], before, "a rewritten file changes");
        assert_eq!(
            file_id(Path::new("/nix/store/abc-vmlinux")).is_none(),
            !Path::new("/nix/store/abc-vmlinux").exists()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_qemu_binary_of_a_script() {
        let found = qemu_binary("exec qemu-system-x86_64 \\\n -m 1");
        if Path::new("/usr/bin/qemu-system-x86_64").exists() {
            assert!(found.unwrap().contains("qemu-system-x86_64 "));
        }
        assert_eq!(qemu_binary("exec /nonexistent/qemu-system-x86_64"), None);
        assert_eq!(qemu_binary("echo hello"), None);
    }
}
