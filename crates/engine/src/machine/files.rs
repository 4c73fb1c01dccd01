//! Copying files between the host and a machine (upstream's `copy_from_host` /
//! `copy_from_machine`): through the guest's agent (PUT and GET) when the machine uses it,
//! else through the shared directory, which the guest sees at `/tmp/shared`. Both land where
//! upstream's `cp -r` lands: `copy_from_host` into `<target>/<name>` when the target is a
//! directory, else at `<target>`; `copy_from_machine` at `<out_dir>/<target_dir>/<name>`.

use std::path::{Path, PathBuf};

use super::{ExecOptions, Machine};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::transport::shell::shell_quote;
use crate::transport::tree::{self, TreeFault, TreeWriter};
use std::os::fd::OwnedFd;

/// How long a copy through the agent may take (upstream's command timeout plus the grace).
const AGENT_COPY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(960);

/// The guest's view of the driver's shared directory.
pub const GUEST_SHARED_DIR: &str = "/tmp/shared";

fn quoted(args: &[&str]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A tree fault of a copy through the shared directory, as the machine's error.
fn tree_fault(machine: &str, what: &str, fault: TreeFault) -> Error {
    Error::io(
        format!("{machine}: {what}"),
        std::io::Error::other(fault.to_string()),
    )
}

/// A fresh directory inside the shared directory, removed when dropped.
struct Exchange {
    host: PathBuf,
    guest: String,
    /// Its name in the shared directory.
    name: String,
}

impl Exchange {
    fn new(shared_dir: &Path) -> Result<Exchange> {
        crate::private::dir(shared_dir)
            .map_err(|e| Error::io(format!("creating {}", shared_dir.display()), e))?;
        for attempt in 0..100u32 {
            let name = format!("xchg-{}-{}-{attempt}", std::process::id(), nanos());
            let host = shared_dir.join(&name);
            if std::fs::create_dir(&host).is_ok() {
                return Ok(Exchange {
                    host,
                    guest: format!("{GUEST_SHARED_DIR}/{name}"),
                    name,
                });
            }
        }
        Err(Error::io(
            "creating an exchange directory",
            std::io::Error::other(format!("in {}", shared_dir.display())),
        ))
    }

    /// The exchange directory, opened without following a link: the guest can change what
    /// is in the shared directory, this name included.
    fn open(&self, shared_dir: &Path) -> std::result::Result<OwnedFd, TreeFault> {
        tree::open_beneath(shared_dir, &[&self.name])
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
    /// `<out_dir>/<target_dir>`, made without following a link an earlier copy brought.
    fn target_dir(&self, target_dir: &str) -> Result<PathBuf> {
        let out_dir = &self.info().out_dir;
        tree::make_dirs_beneath(out_dir, Path::new(target_dir)).map_err(|e| {
            tree_fault(
                self.name(),
                &format!("creating {}", out_dir.join(target_dir).display()),
                e,
            )
        })
    }

    /// Copies the tree `name` of the directory `from` (shown as `shown`) through `writer`,
    /// and logs what the copy left out (FIFOs, sockets, devices); a fault is the machine's
    /// error about `what`.
    fn copy_through(
        &self,
        op: &str,
        what: &str,
        (from, shown): (&OwnedFd, &Path),
        name: &str,
        mut writer: TreeWriter,
    ) -> Result<()> {
        let fault = |e| tree_fault(self.name(), what, e);
        let skipped = tree::copy_tree(from, shown, name, &mut writer).map_err(fault)?;
        writer.finish().map_err(fault)?;
        for path in skipped {
            self.log(&format!(
                "{op}: left out {} (not a file, a directory or a symlink)",
                path.display()
            ));
        }
        Ok(())
    }

    /// True when the machine's commands (and copies) go through its agent; connects first.
    pub(super) fn via_agent(&self) -> Result<bool> {
        self.run_hook()?;
        self.connect()?;
        Ok(self.shell.has_agent())
    }

    /// The absolute, symlink-free guest path that `target` (a shell word, already quoted or
    /// not, as the caller's upstream counterpart has it) names, with `name` appended when it
    /// is a directory and `into_dir` (as `cp -r` does); its parent directory is made.
    fn guest_destination(&self, target_word: &str, name: Option<&str>) -> Result<String> {
        let into = match name {
            Some(n) => format!("[ -d \"$t\" ] && t=\"$t\"/{}; ", shell_quote(n)),
            None => String::new(),
        };
        let command = format!(
            "t={target_word}; {into}mkdir -p -- \"$(dirname -- \"$t\")\"; \
             cd -P -- \"$(dirname -- \"$t\")\"; printf '%s/%s' \"$(pwd -P)\" \"$(basename -- \"$t\")\""
        );
        self.resolved(&command, target_word)
    }

    /// The absolute, symlink-free guest path of `source` (its last component kept as is).
    fn guest_source(&self, source: &str) -> Result<String> {
        let s = shell_quote(source);
        let command = format!(
            "cd -P -- \"$(dirname -- {s})\"; printf '%s/%s' \"$(pwd -P)\" \"$(basename -- {s})\""
        );
        self.resolved(&command, source)
    }

    fn resolved(&self, command: &str, what: &str) -> Result<String> {
        let (status, out) = self.execute_unhooked(command, ExecOptions::default())?;
        if status != 0 {
            return Err(Error::CommandFailed {
                machine: self.name().to_string(),
                command: format!("finding the guest path of {what}"),
                status,
                output: out,
            });
        }
        Ok(match out.strip_prefix("//") {
            Some(rest) => format!("/{rest}"),
            None => out,
        })
    }

    /// Copies `source` (a host file or directory) to `target` in the machine.
    pub fn copy_from_host(&self, source: &Path, target: &str) -> Result<()> {
        let name = base_name(&source.display().to_string(), "source")?;
        if self.via_agent()? {
            let dest = self.guest_destination(&shell_quote(target), Some(&name))?;
            return self.shell.put_tree(
                &self.info,
                &self.console,
                source,
                &dest,
                Deadline::after(Some(AGENT_COPY_TIMEOUT)),
            );
        }
        let shared_dir = &self.info().shared_dir;
        let xchg = Exchange::new(shared_dir)?;
        self.succeed(&[quoted(&["mkdir", "-p", &xchg.guest])], None)?;
        let what = format!("copying {} to the shared directory", source.display());
        let parent = source
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let fault = |e| tree_fault(self.name(), &what, e);
        let from = tree::open_beneath(parent, &[]).map_err(fault)?;
        let writer = TreeWriter::in_dir(xchg.open(shared_dir).map_err(fault)?, &xchg.host, &name)
            .map_err(fault)?;
        self.copy_through("copy_from_host", &what, (&from, parent), &name, writer)?;
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
        if self.via_agent()? {
            if !source.is_file() {
                return Err(Error::io(
                    format!("reading {}", source.display()),
                    std::io::Error::other("not a file"),
                ));
            }
            // the target is a shell word, unquoted, as upstream sends it
            let dest = self.guest_destination(target, None)?;
            return self.shell.put_tree(
                &self.info,
                &self.console,
                source,
                &dest,
                Deadline::after(Some(AGENT_COPY_TIMEOUT)),
            );
        }
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
        if self.via_agent()? {
            let from = self.guest_source(source.trim_end_matches('/'))?;
            let dest_dir = self.target_dir(target_dir)?;
            self.shell.get_tree(
                &self.info,
                &self.console,
                &from,
                &dest_dir,
                &name,
                Deadline::after(Some(AGENT_COPY_TIMEOUT)),
            )?;
            return Ok(dest_dir.join(&name));
        }
        let xchg = Exchange::new(&self.info().shared_dir)?;
        self.succeed(&[quoted(&["mkdir", "-p", &xchg.guest])], None)?;
        let to = format!("{}/{name}", xchg.guest);
        self.succeed(&[quoted(&["cp", "-r", source, &to])], None)?;
        let dest_dir = self.target_dir(target_dir)?;
        let dest = dest_dir.join(&name);
        let what = format!("copying {source} to {}", dest.display());
        let fault = |e| tree_fault(self.name(), &what, e);
        let from = xchg.open(&self.info().shared_dir).map_err(fault)?;
        let writer = TreeWriter::new(&dest_dir, &name).map_err(fault)?;
        self.copy_through(
            "copy_from_machine",
            &what,
            (&from, &xchg.host),
            &name,
            writer,
        )?;
        Ok(dest)
    }
}
