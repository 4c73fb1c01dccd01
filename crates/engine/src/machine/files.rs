//! Copying files between the host and a machine through the shared directory, which the
//! guest sees at `/tmp/shared` (upstream's `copy_from_host` / `copy_from_machine`).

use std::path::{Path, PathBuf};

use super::Machine;
use crate::error::{Error, Result};
use crate::transport::shell::shell_quote;

/// The guest's view of the driver's shared directory.
pub const GUEST_SHARED_DIR: &str = "/tmp/shared";

fn quoted(args: &[&str]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Copies a file or a directory tree, keeping modes.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, meta.permissions())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else {
        std::fs::copy(from, to).map(drop)
    }
}

/// A fresh directory inside the shared directory, removed when dropped.
struct Exchange {
    host: PathBuf,
    guest: String,
}

impl Exchange {
    fn new(shared_dir: &Path) -> Result<Exchange> {
        std::fs::create_dir_all(shared_dir)
            .map_err(|e| Error::io(format!("creating {}", shared_dir.display()), e))?;
        for attempt in 0..100u32 {
            let name = format!("xchg-{}-{}-{attempt}", std::process::id(), nanos());
            let host = shared_dir.join(&name);
            if std::fs::create_dir(&host).is_ok() {
                return Ok(Exchange {
                    host,
                    guest: format!("{GUEST_SHARED_DIR}/{name}"),
                });
            }
        }
        Err(Error::io(
            "creating an exchange directory",
            std::io::Error::other(format!("in {}", shared_dir.display())),
        ))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn base_name(path: &str, what: &str) -> Result<String> {
    Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Config(format!("{what} `{path}` has no file name")))
}

impl Machine {
    /// Copies `source` (a host file or directory) to `target` in the machine.
    pub fn copy_from_host(&self, source: &Path, target: &str) -> Result<()> {
        let name = base_name(&source.display().to_string(), "source")?;
        let xchg = Exchange::new(&self.info().shared_dir)?;
        self.succeed(&[quoted(&["mkdir", "-p", &xchg.guest])], None)?;
        copy_tree(source, &xchg.host.join(&name))
            .map_err(|e| Error::io(format!("copying {}", source.display()), e))?;
        let parent = Path::new(target)
            .parent()
            .map(|p| p.display().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| ".".to_string());
        self.succeed(&[quoted(&["mkdir", "-p", &parent])], None)?;
        let from = format!("{}/{name}", xchg.guest);
        self.succeed(&[quoted(&["cp", "-r", &from, target])], None)?;
        Ok(())
    }

    /// Copies `source` to `target` through the shell, base64-encoded (no shared directory
    /// needed; limited by the command-line length).
    pub fn copy_from_host_via_shell(&self, source: &Path, target: &str) -> Result<()> {
        use base64::Engine as _;
        let data = std::fs::read(source)
            .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        self.succeed(
            &[
                format!("mkdir -p $(dirname {target})"),
                format!("echo -n {encoded} | base64 -d > {target}"),
            ],
            None,
        )
        .map(drop)
    }

    /// Copies `source` (a file or directory in the machine) to `<out_dir>/<target_dir>/`.
    pub fn copy_from_machine(&self, source: &str, target_dir: &str) -> Result<PathBuf> {
        let name = base_name(source, "source")?;
        let xchg = Exchange::new(&self.info().shared_dir)?;
        self.succeed(&[quoted(&["mkdir", "-p", &xchg.guest])], None)?;
        let to = format!("{}/{name}", xchg.guest);
        self.succeed(&[quoted(&["cp", "-r", source, &to])], None)?;
        let dest_dir = self.info().out_dir.join(target_dir);
        std::fs::create_dir_all(&dest_dir)
            .map_err(|e| Error::io(format!("creating {}", dest_dir.display()), e))?;
        let dest = dest_dir.join(&name);
        copy_tree(&xchg.host.join(&name), &dest)
            .map_err(|e| Error::io(format!("copying to {}", dest.display()), e))?;
        Ok(dest)
    }
}
