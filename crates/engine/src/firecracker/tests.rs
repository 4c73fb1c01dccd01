//! The Firecracker backend's launch over a machine: the start script, the binary, the API
//! socket, the calls against a fake API server, the faults, and what it does not support.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{FirecrackerBackend, API_SOCKET};
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
    test_support::start_script(dir, MachineKind::Firecracker, extra)
}

fn machine(dir: &Path, backend: FirecrackerBackend, transport: Transport) -> Machine {
    test_support::machine(dir, Box::new(backend), transport)
}

fn serve_when_started(dir: &Path) -> std::thread::JoinHandle<(Arc<FakeApi>, String)> {
    test_support::serve_when_started(dir, API_SOCKET, Arc::default())
}

#[test]
fn a_launch_configures_and_starts_the_microvm() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), r#", "vcpus": 2"#);
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(fake_binary(dir.path()), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Auto);
    let server = serve_when_started(dir.path());
    m.start(false).unwrap();
    let (fake, args) = server.join().unwrap();
    let state = dir.path().join("vm-state-m");
    assert_eq!(
        args.trim(),
        format!("--api-sock {}/firecracker.sock --id m", state.display())
    );
    assert_eq!(
        fake.calls(),
        [
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /vsock",
            "PUT /actions"
        ]
    );
    let seen = fake.seen.lock().unwrap().clone();
    let metrics = state.join("firecracker-metrics.json");
    assert_eq!(
        seen[0].body,
        serde_json::json!({"metrics_path": metrics.display().to_string()})
    );
    // Firecracker does not create it: the backend did
    assert!(metrics.is_file());
    assert_eq!(
        seen[1].body,
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 128, "track_dirty_pages": true})
    );
    assert_eq!(
        seen[3].body,
        serde_json::json!({"guest_cid": 3, "uds_path": format!("{}/vsock.sock", state.display())})
    );
    assert!(m.booted() && m.pid().is_some());
    m.release();
    assert!(!m.booted());
}

#[test]
fn forced_to_the_backdoor_it_says_there_is_none() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(fake_binary(dir.path()), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Backdoor);
    let server = serve_when_started(dir.path());
    m.start(false).unwrap();
    server.join().unwrap();
    let e = m
        .execute("true", ExecOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("m: {}", no_backdoor(MachineKind::Firecracker))),
        "{e}"
    );
    m.release();
}

#[test]
fn an_api_error_at_start_names_the_machine_the_call_and_the_fault() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(fake_binary(dir.path()), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Auto);
    // The fault is in place before the socket answers.
    let fake = Arc::new(FakeApi::default());
    fake.fail(
        "PUT /boot-source",
        400,
        serde_json::json!({"fault_message": "Boot source error: The kernel file cannot be opened"}),
    );
    let server = test_support::serve_when_started(dir.path(), API_SOCKET, fake);
    let e = m.start(false).unwrap_err();
    let (fake, _) = server.join().unwrap();
    assert!(matches!(e, Error::Guest { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(
            "m: Firecracker API call PUT /boot-source failed: Boot source error: The kernel file cannot be opened (HTTP 400)"
        ),
        "{text}"
    );
    assert_eq!(
        fake.calls(),
        ["PUT /metrics", "PUT /machine-config", "PUT /boot-source"]
    );
    // The process was killed and nothing runs.
    assert!(!m.booted());
}

#[test]
fn the_vmm_exiting_at_start_shows_its_stderr() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let bin = dir.path().join("firecracker");
    executable(
        &bin,
        "echo 'Arguments parsing error: bad --api-sock' >&2\nexit 1",
    );
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(bin.clone(), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "{}: it exited (exit status: 1) before serving its API socket:\nArguments parsing error: bad --api-sock",
            bin.display()
        )),
        "{e}"
    );
}

#[test]
fn an_api_socket_that_never_appears_is_a_bounded_wait() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let bin = dir.path().join("firecracker");
    executable(&bin, "echo starting >&2\nexec sleep 300");
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(bin, Duration::from_millis(200));
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err().to_string();
    assert!(e.contains("started, but its API socket"), "{e}");
    assert!(e.contains("firecracker.sock did not appear within"), "{e}");
    assert!(e.contains("starting"), "{e}");
    assert!(!m.booted());
}

#[test]
fn a_missing_binary_names_it_and_the_variable() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), "");
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_search_path(&dir.path().join("empty").display().to_string());
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("the firecracker binary was not found"), "{e}");
    assert!(e.contains("NIXOS_TEST_NG_FIRECRACKER"), "{e}");
}

#[test]
fn a_bad_configuration_names_the_script_and_the_key() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), r#", "vcpu": 2"#);
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(fake_binary(dir.path()), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err().to_string();
    assert!(e.contains("machine `m`: start script `"), "{e}");
    assert!(
        e.contains("run-m-firecracker` printed a bad VMM configuration: unknown key `vcpu`"),
        "{e}"
    );
    // Firecracker was not started.
    assert!(!dir.path().join("args").exists());

    let failing = dir.path().join("run-bad-firecracker");
    executable(&failing, "echo 'no kernel built' >&2; exit 3");
    let backend = FirecrackerBackend::new(failing.display().to_string())
        .with_binary(fake_binary(dir.path()), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err().to_string();
    assert!(
        e.contains("failed (exit status: 3):\nno kernel built"),
        "{e}"
    );
}

#[test]
fn vlans_without_root_or_without_a_switch_fail_at_start() {
    let dir = TestDir::new();
    let script = start_script(dir.path(), r#", "vlans": [7]"#);
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(fake_binary(dir.path()), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Auto);
    let e = m.start(false).unwrap_err().to_string();
    // SAFETY: plain getter.
    let want = if unsafe { libc::geteuid() } == 0 {
        "VLAN 7 is not one of the run's VLANs"
    } else {
        "a machine with VLAN NICs needs root"
    };
    assert!(e.contains(want), "{e}");
}

#[test]
fn what_it_cannot_do_is_unsupported() {
    let dir = TestDir::new();
    // the guest's X display is captured through the agent (machine/screen.rs): with the
    // backdoor transport, which this VMM has not, there is no screen at all
    let script = start_script(dir.path(), "");
    let backend = FirecrackerBackend::new(script.display().to_string())
        .with_binary(fake_binary(dir.path()), Duration::from_secs(30));
    let m = machine(dir.path(), backend, Transport::Backdoor);
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
            format!("m: {op}: not supported by the Firecracker backend ({reason})")
        );
    }
}
