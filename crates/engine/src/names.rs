//! Machine names: from start-script paths, and as Python identifiers.

/// Upstream's `pythonize_name`: the first character must be a letter or `_`, the others
/// letters, digits or `_`; anything else becomes `_`.
pub fn pythonize(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The machine name a start script implies: `run-<name>-vm` (or `-nspawn`), else `machine`.
pub fn from_start_script(script: &str, suffix: &str) -> String {
    let base = script.rsplit('/').next().unwrap_or(script);
    base.strip_prefix("run-")
        .and_then(|s| s.strip_suffix(suffix))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| "machine".to_string())
}

/// The machine name of a start script for a machine of `kind` (`run-<name>-vm` for VMs,
/// `run-<name>-nspawn` for containers).
pub fn from_start_script_of(script: &str, kind: crate::config::MachineKind) -> String {
    let suffix = match kind {
        crate::config::MachineKind::Qemu => "-vm",
        crate::config::MachineKind::Nspawn => "-nspawn",
    };
    from_start_script(script, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pythonize_like_upstream() {
        assert_eq!(pythonize("machine-a"), "machine_a");
        assert_eq!(pythonize("1node"), "_node");
        assert_eq!(pythonize("a.b1"), "a_b1");
    }

    #[test]
    fn name_from_script() {
        assert_eq!(
            from_start_script("/nix/store/x/bin/run-server-vm", "-vm"),
            "server"
        );
        assert_eq!(from_start_script("./run-my-box-vm", "-vm"), "my-box");
        assert_eq!(from_start_script("/bin/qemu-thing", "-vm"), "machine");
    }
}
