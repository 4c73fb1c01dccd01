//! Names: machines' from start-script paths and as Python identifiers, and the general names
//! of a test script's namespace.

/// The names every test script sees besides its machines and VLANs, in the order of
/// upstream's `test_symbols`: the driver's namespace, `generate-driver-symbols`' file, the
/// pre-boot check and the editor stubs all take them from here.
pub const GENERAL_SYMBOLS: &[&str] = &[
    "start_all",
    "test_script",
    "machines",
    "machines_qemu",
    "machines_nspawn",
    "vlans",
    "driver",
    "log",
    "os",
    "create_machine",
    "subtest",
    "run_tests",
    "join_all",
    "retry",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
    "Machine",
    "BaseMachine",
    "QemuMachine",
    "NspawnMachine",
    "FirecrackerMachine",
    "CloudHypervisorMachine",
    "t",
    "debug",
    "dump_machine_ssh",
];

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

/// The machine name a start script implies, else `machine`.
///
/// VMs follow upstream's `re.search("run-(.+)-vm$", cmd)` on the whole command: the leftmost
/// `run-` that leaves a non-empty name before a final `-vm` wins, so
/// `/x/run-a/bin/run-b-vm` names `a/bin/run-b`, as upstream. Containers follow upstream's
/// `run-(.+)-nspawn` searched in the script's file name (no end anchor; the last `-nspawn`).
/// Another `suffix` is matched as the VM rule with that suffix.
pub fn from_start_script(script: &str, suffix: &str) -> String {
    let found = if suffix == "-nspawn" {
        container_name(script)
    } else {
        anchored_name(script, suffix)
    };
    found.unwrap_or_else(|| "machine".to_string())
}

/// `re.search("run-(.+)<suffix>$", command)`: `.` stops at newlines and `$` also matches
/// before one final newline, so only the last line can match.
fn anchored_name(command: &str, suffix: &str) -> Option<String> {
    let command = command.strip_suffix('\n').unwrap_or(command);
    let line = command.rsplit('\n').next().unwrap_or(command);
    let end = line.strip_suffix(suffix)?.len();
    let start = line.find("run-")? + "run-".len();
    (start < end).then(|| line[start..end].to_string())
}

/// `re.search("run-(.+)-nspawn", basename)`: the leftmost `run-`, then greedily up to the last
/// `-nspawn` that leaves a non-empty name; `None` where upstream's
/// `NspawnMachine.machine_name_from_start_command` fails its assertion.
pub fn container_name(script: &str) -> Option<String> {
    let base = script.rsplit('/').next().unwrap_or(script);
    let line = base.split('\n').next().unwrap_or(base);
    let start = line.find("run-")? + "run-".len();
    let end = line.rfind("-nspawn")?;
    (start < end).then(|| line[start..end].to_string())
}

/// The machine name of a start script for a machine of `kind` (`run-<name>-vm` for VMs,
/// `run-<name>-nspawn` for containers).
pub fn from_start_script_of(script: &str, kind: crate::kind::MachineKind) -> String {
    from_start_script(script, kind.script_suffix())
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

    /// The cases where upstream's regex on the whole command differs from a file-name rule,
    /// with what Python's `re.search("run-(.+)-vm$", cmd)` gives for each.
    #[test]
    fn vm_names_follow_upstream_regex_on_the_whole_command() {
        let cases = [
            ("/tmp/run-a/bin/run-b-vm", "a/bin/run-b"),
            ("/bin/xrun-foo-vm", "foo"),
            ("run-server-vm --flag", "machine"),
            ("run--vm", "machine"),
            ("run-x-vm", "x"),
            ("run-a-vm\n", "a"),
            ("run-a-vm\nrun-b-vm", "b"),
            ("run-a-vm-vm", "a-vm"),
            ("/nix/store/0abc-nixos-vm/bin/run-my.box-vm", "my.box"),
        ];
        for (cmd, want) in cases {
            assert_eq!(from_start_script(cmd, "-vm"), want, "{cmd:?}");
        }
    }

    #[test]
    fn container_names_follow_upstream_regex_on_the_file_name() {
        use crate::kind::MachineKind::Nspawn;
        let cases = [
            ("/nix/store/h-c/bin/run-c1-nspawn", "c1"),
            ("/tmp/run-a/run-c2-nspawn", "c2"),
            ("run-c3-nspawn-wrapped", "c3"),
            ("run-c-nspawn-nspawn", "c-nspawn"),
            ("/bin/container", "machine"),
        ];
        for (script, want) in cases {
            assert_eq!(from_start_script_of(script, Nspawn), want, "{script:?}");
        }
    }
}
