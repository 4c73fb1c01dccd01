//! The Cloud Hypervisor backend's launch over a machine: the command line, the calls against
//! a fake API server, snapshot and restore, reboot, the faults, and what it does not support.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{CloudHypervisorBackend, API_SOCKET};
use crate::config::Transport;
use crate::error::Error;
use crate::kind::MachineKind;
use crate::machine::{ExecOptions, Machine};
use crate::vmm::api::fake_server::FakeApi;
use crate::vmm::core::VmmBackend;
use crate::vmm::launch::no_backdoor;
use crate::vmm::test_dir::TestDir;
use crate::vmm::test_support::{self, executable, fake_binary};

fn start_script(dir: &Path, extra: &str) -> PathBuf {
    test_support::start_script(dir, MachineKind::CloudHypervisor, extra)
}

fn backend(dir: &Path, extra: &str) -> CloudHypervisorBackend {
    CloudHypervisorBackend::new(start_script(dir, extra).display().to_string())
        .with_binary(fake_binary(dir), Duration::from_secs(30))
}

fn machine(dir: &Path, backend: CloudHypervisorBackend, transport: Transport) -> Machine {
    test_support::machine(dir, Box::new(backend), transport)
}

/// Starts machine `m` against a fake API with `fake`'s faults; the fake and the arguments.
fn started(dir: &Path, fake: Arc<FakeApi>) -> (Machine, Arc<FakeApi>, String) {
    let m = machine(dir, backend(dir, r#", "vcpus": 2"#), Transport::Auto);
    let server = test_support::serve_when_started(dir, API_SOCKET, fake);
    m.start(false).unwrap();
    let (fake, args) = server.join().unwrap();
    (m, fake, args)
}

#[test]
fn a_launch_creates_and_boots_the_vm() {
    let dir = TestDir::new();
    let (m, fake, args) = started(dir.path(), Arc::default());
    let state = dir.path().join("vm-state-m");
    assert_eq!(
        args.trim(),
        format!(
            "--api-socket path={}/cloud-hypervisor.sock",
            state.display()
        )
    );
    assert_eq!(
        fake.calls(),
        ["PUT /api/v1/vm.create", "PUT /api/v1/vm.boot"]
    );
    let seen = fake.seen.lock().unwrap().clone();
    let d = dir.path().display();
    assert_eq!(
        seen[0].body,
        json!({
            "payload": {"kernel": format!("{d}/vmlinux"), "cmdline": "console=ttyS0 reboot=k"},
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
            "memory": {"size": 128u64 << 20},
            "vsock": {"cid": 3, "socket": format!("{}/vsock.sock", state.display())},
            "serial": {"mode": "Tty"},
            "console": {"mode": "Off"},
        })
    );
    assert!(m.booted() && m.pid().is_some());
    m.release();
    assert!(!m.booted());
}

#[test]
fn snapshot_and_reboot_requests() {
    let dir = TestDir::new();
    let (m, fake, _) = started(dir.path(), Arc::default());
    let info = m.info();
    let b = m.backend_for_tests().snapshots().unwrap();
    b.pause(info).unwrap();
    b.save(info, "ready").unwrap();
    b.resume(info).unwrap();
    // a second resume has nothing to do
    b.resume(info).unwrap();
    let snapshot_dir = dir.path().join("vm-state-m/snapshot-ready");
    assert!(snapshot_dir.is_dir());
    m.backend_for_tests().power().unwrap().reboot(&m).unwrap();
    assert_eq!(
        fake.calls()[2..],
        [
            "PUT /api/v1/vm.pause",
            "PUT /api/v1/vm.snapshot",
            "PUT /api/v1/vm.resume",
            "PUT /api/v1/vm.reboot",
        ]
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(
        seen[3].body,
        json!({"destination_url": format!("file://{}", snapshot_dir.display())})
    );
    m.release();
}

#[test]
fn a_restore_is_a_new_process_that_restores_the_directory_and_resumes() {
    let dir = TestDir::new();
    let (m, first, _) = started(dir.path(), Arc::default());
    let info = m.info();
    let snapshots = m.backend_for_tests().snapshots().unwrap();
    snapshots.pause(info).unwrap();
    snapshots.save(info, "ready").unwrap();
    snapshots.resume(info).unwrap();
    let old_pid = m.pid().unwrap();
    // the next process gets its own fake API
    std::fs::remove_file(dir.path().join("args")).unwrap();
    let server = test_support::serve_when_started(dir.path(), API_SOCKET, Arc::default());
    snapshots.rewind(&m, "ready", &[]).unwrap();
    let (second, _) = server.join().unwrap();
    let folder = dir.path().join("vm-state-m/snapshot-ready");
    assert_eq!(
        second.calls(),
        ["PUT /api/v1/vm.restore", "PUT /api/v1/vm.resume"]
    );
    assert_eq!(
        second.seen.lock().unwrap()[0].body,
        json!({"source_url": format!("file://{}", folder.display())})
    );
    // the machine adopted the new process; the old API saw nothing more
    assert_ne!(m.pid(), Some(old_pid));
    assert_eq!(first.calls().len(), 5);
    // it runs: the machine's resume after a restore has nothing to send
    snapshots.resume(info).unwrap();
    assert_eq!(second.calls().len(), 2);
    m.release();
}

#[test]
fn forced_to_the_backdoor_it_says_there_is_none() {
    let dir = TestDir::new();
    let m = machine(dir.path(), backend(dir.path(), ""), Transport::Backdoor);
    let server = test_support::serve_when_started(dir.path(), API_SOCKET, Arc::default());
    m.start(false).unwrap();
    server.join().unwrap();
    let e = m
        .execute("true", ExecOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("m: {}", no_backdoor(MachineKind::CloudHypervisor))),
        "{e}"
    );
    assert!(
        e.contains("cloud-hypervisor machines have no console backdoor"),
        "{e}"
    );
    m.release();
}

#[test]
fn an_api_error_at_start_names_the_machine_the_call_and_the_messages() {
    let dir = TestDir::new();
    let m = machine(dir.path(), backend(dir.path(), ""), Transport::Auto);
    let fake = Arc::new(FakeApi::default());
    fake.fail(
        "PUT /api/v1/vm.boot",
        500,
        json!([
            "Error from API",
            "The VM could not boot",
            "Cannot open the kernel /x: gone"
        ]),
    );
    let server = test_support::serve_when_started(dir.path(), API_SOCKET, fake);
    let e = m.start(false).unwrap_err();
    let (fake, _) = server.join().unwrap();
    assert!(matches!(e, Error::Guest { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(
            "m: Cloud Hypervisor API call PUT /api/v1/vm.boot failed: Error from API: The VM could not boot: Cannot open the kernel /x: gone (HTTP 500)"
        ),
        "{text}"
    );
    assert_eq!(
        fake.calls(),
        ["PUT /api/v1/vm.create", "PUT /api/v1/vm.boot"]
    );
    assert!(!m.booted());
}

#[test]
fn the_vmm_exiting_at_start_shows_its_stderr() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let bin = dir.path().join("cloud-hypervisor");
    executable(&bin, "echo 'error: bad --api-socket' >&2\nexit 1");
    let backend = CloudHypervisorBackend::new(script.display().to_string())
        .with_binary(bin.clone(), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "{}: it exited (exit status: 1) before serving its API socket:\nerror: bad --api-socket",
            bin.display()
        )),
        "{e}"
    );
}

#[test]
fn an_api_socket_that_never_appears_is_a_bounded_wait() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let bin = dir.path().join("cloud-hypervisor");
    executable(&bin, "echo starting >&2\nexec sleep 300");
    let backend = CloudHypervisorBackend::new(script.display().to_string())
        .with_binary(bin, Duration::from_millis(200));
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err().to_string();
    assert!(
        e.contains("cloud-hypervisor.sock did not appear within"),
        "{e}"
    );
    assert!(e.contains("starting"), "{e}");
    assert!(!m.booted());
}

#[test]
fn a_missing_binary_names_it_and_the_variable() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let backend = CloudHypervisorBackend::new(script.display().to_string())
        .with_search_path(&dir.path().join("empty").display().to_string());
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("the cloud-hypervisor binary was not found"),
        "{e}"
    );
    assert!(e.contains("NIXOS_TEST_NG_CLOUD_HYPERVISOR"), "{e}");
}

#[test]
fn a_bad_configuration_names_the_script_and_the_key() {
    let dir = TestDir::new();
    let m = machine(
        dir.path(),
        backend(dir.path(), r#", "vcpu": 2"#),
        Transport::Auto,
    );
    let e = m.start(false).unwrap_err().to_string();
    assert!(
        e.contains("run-m-cloud-hypervisor` printed a bad VMM configuration: unknown key `vcpu`"),
        "{e}"
    );
    // Cloud Hypervisor was not started.
    assert!(!dir.path().join("args").exists());
}

#[test]
fn restoring_a_snapshot_that_is_gone_is_named() {
    let dir = TestDir::new();
    let (m, _, _) = started(dir.path(), Arc::default());
    let e = m
        .backend_for_tests()
        .snapshots()
        .unwrap()
        .rewind(&m, "nope", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot restore snapshot \"nope\": its directory") && e.contains("is gone"),
        "{e}"
    );
    m.release();
}

#[test]
fn what_it_cannot_do_is_unsupported() {
    let dir = TestDir::new();
    // the guest's X display is captured through the agent (machine/screen.rs): with the
    // backdoor transport, which this VMM has not, there is no screen at all
    let m = machine(dir.path(), backend(dir.path(), ""), Transport::Backdoor);
    let checks: Vec<(Error, &str, &str)> = vec![
        (m.screenshot("x").unwrap_err(), "screenshot", "no display"),
        (
            m.send_key("a", None, false).unwrap_err(),
            "send_key",
            "no keyboard",
        ),
        (
            m.send_monitor_command("info").unwrap_err(),
            "send_monitor_command",
            "no QEMU monitor or QMP",
        ),
        (
            m.forward_port(1, 2).unwrap_err(),
            "forward_port",
            "no user-mode network to forward host ports into",
        ),
        (
            m.send_console(b"x").unwrap_err(),
            "send_console",
            "no serial console input",
        ),
    ];
    for (e, op, reason) in checks {
        assert_eq!(
            e.to_string(),
            format!("m: {op}: not supported by the Cloud Hypervisor backend ({reason})")
        );
    }
}
