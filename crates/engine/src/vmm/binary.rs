//! Which VMM binary runs a machine: the path in the VMM's variable
//! (`NIXOS_TEST_NG_FIRECRACKER`, `NIXOS_TEST_NG_CLOUD_HYPERVISOR`), else the program's name
//! on `PATH`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A VMM the engine drives through its REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// Firecracker.
    Firecracker,
    /// Cloud Hypervisor.
    CloudHypervisor,
}

impl Vmm {
    /// The kind of machine it runs.
    pub fn kind(self) -> crate::kind::MachineKind {
        match self {
            Vmm::Firecracker => crate::kind::MachineKind::Firecracker,
            Vmm::CloudHypervisor => crate::kind::MachineKind::CloudHypervisor,
        }
    }

    /// The program's name on `PATH`.
    pub fn program(self) -> &'static str {
        match self {
            Vmm::Firecracker => "firecracker",
            Vmm::CloudHypervisor => "cloud-hypervisor",
        }
    }

    /// The variable that names the binary.
    pub fn variable(self) -> &'static str {
        match self {
            Vmm::Firecracker => "NIXOS_TEST_NG_FIRECRACKER",
            Vmm::CloudHypervisor => "NIXOS_TEST_NG_CLOUD_HYPERVISOR",
        }
    }

    /// How to get it.
    fn install_hint(self) -> &'static str {
        match self {
            Vmm::Firecracker => {
                "install it (nixpkgs: `firecracker`; or a release binary from \
                 https://github.com/firecracker-microvm/firecracker/releases)"
            }
            Vmm::CloudHypervisor => {
                "install it (nixpkgs: `cloud-hypervisor`; or a release binary from \
                 https://github.com/cloud-hypervisor/cloud-hypervisor/releases)"
            }
        }
    }

    /// The binary to run: the variable's path (which must be an executable file), else the
    /// program found on `path_var` (the `PATH` value). The error names the program, the
    /// variable and how to install it.
    pub fn binary_from(self, variable: Option<&str>, path_var: Option<&str>) -> Result<PathBuf> {
        let program = self.program();
        let var = self.variable();
        if let Some(value) = variable.map(str::trim).filter(|v| !v.is_empty()) {
            let path = Path::new(value);
            return if is_executable(path) {
                Ok(path.to_path_buf())
            } else {
                Err(Error::Config(format!(
                    "{var}={value:?} is not an executable file: point it at the {program} \
                     binary, or unset it to use `{program}` from PATH"
                )))
            };
        }
        path_var
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(program))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                Error::Config(format!(
                    "the {program} binary was not found: it is not on PATH and {var} is not \
                     set; {}, or set {var} to its path",
                    self.install_hint()
                ))
            })
    }

    /// [`Vmm::binary_from`] with the process's environment.
    pub fn binary(self) -> Result<PathBuf> {
        let variable = std::env::var(self.variable()).ok();
        let path = std::env::var("PATH").ok();
        self.binary_from(variable.as_deref(), path.as_deref())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::test_dir::TestDir;
    use std::os::unix::fs::PermissionsExt;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_variable_wins_over_path() {
        let dir = TestDir::new();
        let own = executable(dir.path(), "my-fc");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        executable(&bin, "firecracker");
        let path = format!("/nonexistent:{}", bin.display());
        let found = Vmm::Firecracker
            .binary_from(Some(own.to_str().unwrap()), Some(&path))
            .unwrap();
        assert_eq!(found, own);
        let found = Vmm::Firecracker.binary_from(None, Some(&path)).unwrap();
        assert_eq!(found, bin.join("firecracker"));
        // empty counts as unset
        let found = Vmm::Firecracker
            .binary_from(Some(" "), Some(&path))
            .unwrap();
        assert_eq!(found, bin.join("firecracker"));
    }

    #[test]
    fn a_missing_binary_names_it_the_variable_and_how_to_install_it() {
        let dir = TestDir::new();
        let e = Vmm::Firecracker
            .binary_from(None, Some(dir.path().to_str().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the firecracker binary was not found"), "{e}");
        assert!(e.contains("NIXOS_TEST_NG_FIRECRACKER"), "{e}");
        assert!(e.contains("nixpkgs: `firecracker`"), "{e}");
        let e = Vmm::CloudHypervisor
            .binary_from(None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cloud-hypervisor binary"), "{e}");
        assert!(e.contains("NIXOS_TEST_NG_CLOUD_HYPERVISOR"), "{e}");
    }

    #[test]
    fn a_variable_naming_no_executable_is_an_error() {
        let dir = TestDir::new();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        for value in [plain.to_str().unwrap(), "/nonexistent/firecracker"] {
            let e = Vmm::Firecracker
                .binary_from(Some(value), Some("/usr/bin"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("NIXOS_TEST_NG_FIRECRACKER=") && e.contains("is not an executable file"),
                "{e}"
            );
        }
    }
}
