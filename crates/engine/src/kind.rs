//! The kinds of machine, with every fact about a kind in one place: its name, the word of
//! machine specs, the start-script suffix, the Python class, whether it needs root, and the
//! words the log uses for it. The bindings expose this table to Python (`machine_kinds()`).

/// What kind of machine a start script starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MachineKind {
    /// A QEMU VM (`run-<name>-vm`).
    Qemu,
    /// A systemd-nspawn container (`run-<name>-nspawn`).
    Nspawn,
}

impl MachineKind {
    /// Every kind, in a fixed order.
    pub const ALL: [MachineKind; 2] = [MachineKind::Qemu, MachineKind::Nspawn];

    /// The engine's name of the kind (`Config.machines`, `MachineHandle.kind`).
    pub fn name(self) -> &'static str {
        match self {
            MachineKind::Qemu => "qemu",
            MachineKind::Nspawn => "nspawn",
        }
    }

    /// The word machine specs use for it (`name:nspawn`, `machine_name_from_script`).
    pub fn spec_word(self) -> &'static str {
        match self {
            MachineKind::Qemu => "vm",
            MachineKind::Nspawn => "nspawn",
        }
    }

    /// The end of its start script's name: `run-<name><suffix>`.
    pub fn script_suffix(self) -> &'static str {
        match self {
            MachineKind::Qemu => "-vm",
            MachineKind::Nspawn => "-nspawn",
        }
    }

    /// The Python class of such a machine (upstream's, also in `kill <class> (pid N)`).
    pub fn python_class(self) -> &'static str {
        match self {
            MachineKind::Qemu => "QemuMachine",
            MachineKind::Nspawn => "NspawnMachine",
        }
    }

    /// The driver must run as root (upstream checks it before anything starts).
    pub fn needs_root(self) -> bool {
        match self {
            MachineKind::Qemu => false,
            MachineKind::Nspawn => true,
        }
    }

    /// Each VLAN gets a tap in the driver's network namespace when such a machine takes part
    /// (nixpkgs' container scripts bridge their veths with it, see `Vlan::plug_host_tap`).
    pub fn wants_vlan_host_tap(self) -> bool {
        match self {
            MachineKind::Qemu => false,
            MachineKind::Nspawn => true,
        }
    }

    /// What the log calls such a machine: "waiting for the VM to power off".
    pub fn noun(self) -> &'static str {
        match self {
            MachineKind::Qemu => "VM",
            MachineKind::Nspawn => "container",
        }
    }

    /// The backend's name: "the systemd-nspawn backend", "(QEMU exit status: 1)".
    pub fn backend_name(self) -> &'static str {
        match self {
            MachineKind::Qemu => "QEMU",
            MachineKind::Nspawn => "systemd-nspawn",
        }
    }

    /// Upstream's `QemuMachine` keeps its last process after it stopped; `NspawnMachine`
    /// forgets it.
    pub fn keeps_last_process(self) -> bool {
        match self {
            MachineKind::Qemu => true,
            MachineKind::Nspawn => false,
        }
    }

    /// Upstream's `NspawnMachine` counts as booted only while its process runs; a
    /// `QemuMachine` stays booted until `wait_for_shutdown` or `release` saw it end.
    pub fn booted_while_process_runs(self) -> bool {
        match self {
            MachineKind::Qemu => false,
            MachineKind::Nspawn => true,
        }
    }

    /// The kind a word names: its name, its spec word, or an alias (`container`,
    /// `systemd-nspawn`).
    pub fn parse(word: &str) -> Option<MachineKind> {
        let word = word.trim().to_ascii_lowercase();
        MachineKind::ALL.into_iter().find(|k| {
            word == k.name()
                || word == k.spec_word()
                || word == k.backend_name().to_ascii_lowercase()
                || (*k == MachineKind::Nspawn && word == "container")
        })
    }

    /// The words [`MachineKind::parse`] takes, for error messages.
    pub fn words() -> String {
        let words: Vec<String> = MachineKind::ALL
            .iter()
            .map(|k| format!("\"{}\"", k.spec_word()))
            .collect();
        words.join(" or ")
    }
}

impl std::fmt::Display for MachineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::MachineKind;

    #[test]
    fn every_word_names_its_kind() {
        for k in MachineKind::ALL {
            assert_eq!(MachineKind::parse(k.name()), Some(k));
            assert_eq!(MachineKind::parse(k.spec_word()), Some(k));
            assert_eq!(MachineKind::parse(k.backend_name()), Some(k));
        }
        assert_eq!(MachineKind::parse("container"), Some(MachineKind::Nspawn));
        assert_eq!(MachineKind::parse("vm"), Some(MachineKind::Qemu));
        assert_eq!(MachineKind::parse("docker"), None);
        assert_eq!(MachineKind::words(), "\"vm\" or \"nspawn\"");
    }
}
