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
    /// A Firecracker microVM (`run-<name>-firecracker`).
    Firecracker,
    /// A Cloud Hypervisor VM (`run-<name>-cloud-hypervisor`).
    CloudHypervisor,
    /// The engine's own test backend (`fake/`): a local bash as the guest.
    #[cfg(test)]
    Fake,
}

/// Everything the engine and the Python package know about a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The engine's name (`Config.machines`, `MachineHandle.kind`).
    pub name: &'static str,
    /// The word machine specs use for it (`name:nspawn`, `machine_name_from_script`).
    pub spec_word: &'static str,
    /// The end of its start script's name: `run-<name><suffix>`.
    pub script_suffix: &'static str,
    /// The Python class of such a machine (upstream's, also in `kill <class> (pid N)`).
    pub python_class: &'static str,
    /// The driver must run as root (upstream checks it before anything starts).
    pub needs_root: bool,
    /// What the log calls such a machine: "waiting for the VM to power off".
    pub noun: &'static str,
    /// The backend's name: "the systemd-nspawn backend", "(QEMU exit status: 1)".
    pub backend_name: &'static str,
    /// Upstream's `QemuMachine` keeps its last process after it stopped; `NspawnMachine`
    /// forgets it.
    pub keeps_last_process: bool,
    /// Upstream's `NspawnMachine` counts as booted only while its process runs; a
    /// `QemuMachine` stays booted until `wait_for_shutdown` or `release` saw it end.
    pub booted_while_process_runs: bool,
    /// Each VLAN gets a tap in the driver's network namespace when such a machine takes part
    /// (nixpkgs' container scripts bridge their veths with it, see `Vlan::plug_host_tap`).
    pub wants_vlan_host_tap: bool,
    /// Its guests can be reached through the guest agent, so `NIXOS_TEST_NG_TRANSPORT` applies
    /// to it. A container has its own shell socket and no agent: the variable leaves it alone.
    pub takes_guest_agent: bool,
    /// The VMM cannot reset a guest: the guest's reset (a reboot) ends its process. With
    /// `allow_reboot`, the machine then launches it again for the next command, as QEMU
    /// without `-no-reboot` reboots in place.
    pub reset_ends_process: bool,
    /// A start script in `--start-scripts` whose name ends with the kind's suffix is one of
    /// its machines (upstream's flag knows only QEMU VMs, so only kinds that are not upstream's
    /// are found so).
    pub found_by_suffix: bool,
}

impl MachineKind {
    /// Every kind Python sees, in a fixed order.
    pub const ALL: [MachineKind; 4] = [
        MachineKind::Qemu,
        MachineKind::Nspawn,
        MachineKind::Firecracker,
        MachineKind::CloudHypervisor,
    ];

    /// The facts of the kind: one arm per kind, the one place a new backend adds its own.
    pub fn facts(self) -> Facts {
        match self {
            MachineKind::Qemu => Facts {
                name: "qemu",
                spec_word: "vm",
                script_suffix: "-vm",
                python_class: "QemuMachine",
                needs_root: false,
                noun: "VM",
                backend_name: "QEMU",
                keeps_last_process: true,
                booted_while_process_runs: false,
                wants_vlan_host_tap: false,
                takes_guest_agent: true,
                reset_ends_process: false,
                found_by_suffix: false,
            },
            MachineKind::Nspawn => Facts {
                name: "nspawn",
                spec_word: "nspawn",
                script_suffix: "-nspawn",
                python_class: "NspawnMachine",
                needs_root: true,
                noun: "container",
                backend_name: "systemd-nspawn",
                keeps_last_process: false,
                booted_while_process_runs: true,
                wants_vlan_host_tap: true,
                takes_guest_agent: false,
                reset_ends_process: false,
                found_by_suffix: false,
            },
            MachineKind::Firecracker => Facts {
                name: "firecracker",
                spec_word: "firecracker",
                script_suffix: "-firecracker",
                python_class: "FirecrackerMachine",
                needs_root: false,
                noun: "VM",
                backend_name: "Firecracker",
                keeps_last_process: true,
                booted_while_process_runs: false,
                wants_vlan_host_tap: false,
                takes_guest_agent: true,
                reset_ends_process: true,
                found_by_suffix: true,
            },
            MachineKind::CloudHypervisor => Facts {
                name: "cloud-hypervisor",
                spec_word: "cloud-hypervisor",
                script_suffix: "-cloud-hypervisor",
                python_class: "CloudHypervisorMachine",
                needs_root: false,
                noun: "VM",
                backend_name: "Cloud Hypervisor",
                keeps_last_process: true,
                booted_while_process_runs: false,
                wants_vlan_host_tap: false,
                takes_guest_agent: true,
                reset_ends_process: false,
                found_by_suffix: true,
            },
            #[cfg(test)]
            MachineKind::Fake => Facts {
                name: "fake",
                spec_word: "fake",
                script_suffix: "-fake",
                python_class: "FakeMachine",
                needs_root: false,
                noun: "fake machine",
                backend_name: "fake",
                keeps_last_process: true,
                booted_while_process_runs: false,
                wants_vlan_host_tap: false,
                takes_guest_agent: true,
                reset_ends_process: false,
                found_by_suffix: false,
            },
        }
    }

    /// See [`Facts::name`].
    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// See [`Facts::spec_word`].
    pub fn spec_word(self) -> &'static str {
        self.facts().spec_word
    }

    /// See [`Facts::script_suffix`].
    pub fn script_suffix(self) -> &'static str {
        self.facts().script_suffix
    }

    /// See [`Facts::python_class`].
    pub fn python_class(self) -> &'static str {
        self.facts().python_class
    }

    /// See [`Facts::needs_root`].
    pub fn needs_root(self) -> bool {
        self.facts().needs_root
    }

    /// See [`Facts::noun`].
    pub fn noun(self) -> &'static str {
        self.facts().noun
    }

    /// See [`Facts::backend_name`].
    pub fn backend_name(self) -> &'static str {
        self.facts().backend_name
    }

    /// See [`Facts::keeps_last_process`].
    pub fn keeps_last_process(self) -> bool {
        self.facts().keeps_last_process
    }

    /// See [`Facts::booted_while_process_runs`].
    pub fn booted_while_process_runs(self) -> bool {
        self.facts().booted_while_process_runs
    }

    /// See [`Facts::takes_guest_agent`].
    pub fn takes_guest_agent(self) -> bool {
        self.facts().takes_guest_agent
    }

    /// See [`Facts::reset_ends_process`].
    pub fn reset_ends_process(self) -> bool {
        self.facts().reset_ends_process
    }

    /// See [`Facts::found_by_suffix`].
    pub fn found_by_suffix(self) -> bool {
        self.facts().found_by_suffix
    }

    /// The kind of a `--start-scripts` entry: a kind found by its suffix
    /// ([`Facts::found_by_suffix`]), else a QEMU VM as upstream.
    pub fn of_start_script(script: &str) -> MachineKind {
        let base = script.trim_end().rsplit('/').next().unwrap_or(script);
        MachineKind::ALL
            .into_iter()
            .find(|k| {
                k.found_by_suffix() && base.starts_with("run-") && base.ends_with(k.script_suffix())
            })
            .unwrap_or(MachineKind::Qemu)
    }

    /// See [`Facts::wants_vlan_host_tap`].
    pub fn wants_vlan_host_tap(self) -> bool {
        self.facts().wants_vlan_host_tap
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
        assert_eq!(
            MachineKind::words(),
            "\"vm\" or \"nspawn\" or \"firecracker\" or \"cloud-hypervisor\""
        );
        assert_eq!(
            MachineKind::parse("Cloud Hypervisor"),
            Some(MachineKind::CloudHypervisor)
        );
        assert_eq!(
            MachineKind::parse("Firecracker"),
            Some(MachineKind::Firecracker)
        );
    }

    #[test]
    fn start_scripts_are_vms_unless_their_kind_is_found_by_suffix() {
        use MachineKind::*;
        for (script, kind) in [
            ("/nix/store/x/bin/run-a-vm", Qemu),
            ("/nix/store/x/bin/run-a-firecracker", Firecracker),
            ("./run-my-box-firecracker", Firecracker),
            ("/x/run-ch1-cloud-hypervisor", CloudHypervisor),
            ("/bin/cloud-hypervisor", Qemu),
            ("/bin/firecracker", Qemu),
            ("/x/run-c-nspawn", Qemu),
        ] {
            assert_eq!(MachineKind::of_start_script(script), kind, "{script}");
        }
    }
}
