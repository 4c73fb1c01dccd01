//! What the VMM backends' tests share: a start script printing a configuration, a fake VMM
//! binary that records its arguments, a fake API served on the socket it was given, and a
//! machine over a backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, MachineInfo};
use crate::config::Transport;
use crate::kind::MachineKind;
use crate::log::Logger;
use crate::machine::Machine;
use crate::vmm::api::fake_server::FakeApi;

/// Writes an executable shell script `path` with `body`.
pub fn executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A start script `run-m<suffix of kind>` in `dir` printing a configuration with a kernel
/// file there, plus `extra` keys.
pub fn start_script(dir: &Path, kind: MachineKind, extra: &str) -> PathBuf {
    std::fs::write(dir.join("vmlinux"), "kernel").unwrap();
    let script = dir.join(format!("run-m{}", kind.script_suffix()));
    executable(
        &script,
        &format!(
            r#"echo "state=$NIXOS_TEST_NG_STATE_DIR" >&2
cat <<EOF
{{"kernel": "{}/vmlinux", "cmdline": "console=ttyS0 reboot=k", "memory_mib": 128{extra}}}
EOF"#,
            dir.display()
        ),
    );
    script
}

/// Machine `m` over `backend`, its state in `dir/vm-state-m`.
pub fn machine(dir: &Path, backend: Box<dyn Backend>, transport: Transport) -> Machine {
    let info = MachineInfo {
        name: "m".to_string(),
        logger: Arc::new(Logger::default()),
        state_dir: dir.join("vm-state-m"),
        shared_dir: dir.join("shared-xchg"),
        out_dir: dir.to_path_buf(),
        boot_timeout: Some(Duration::from_secs(30)),
        env: Vec::new(),
        vnc: false,
        transport,
        node: 1,
        boot_cache: None,
    };
    Machine::new(info, backend, false).unwrap()
}

/// A fake VMM that records its arguments in `dir/args` and then waits to be killed; the test
/// serves the API on the socket it was given.
pub fn fake_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("fake-vmm");
    executable(
        &bin,
        &format!(
            "echo \"$@\" > {}/args.tmp && mv {0}/args.tmp {0}/args\nexec sleep 300",
            dir.display()
        ),
    );
    bin
}

/// Serves `fake` at `dir/vm-state-m/<socket>` once the fake binary started; its arguments.
pub fn serve_when_started(
    dir: &Path,
    socket: &str,
    fake: Arc<FakeApi>,
) -> std::thread::JoinHandle<(Arc<FakeApi>, String)> {
    let args = dir.join("args");
    let sock = dir.join("vm-state-m").join(socket);
    std::thread::spawn(move || {
        while !args.exists() {
            std::thread::sleep(Duration::from_millis(2));
        }
        FakeApi::serve_with(&sock, fake.clone());
        (fake, std::fs::read_to_string(&args).unwrap())
    })
}
