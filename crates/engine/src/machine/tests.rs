//! The machine over the engine's test backend (`fake/`): its lifecycle, connect and
//! handshake, power-off, release, adopting a new launch, and `Unsupported`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{ExecOptions, Machine, State};
use crate::backend::{Host, LaunchOptions, MachineInfo};
use crate::error::Error;
use crate::fake::{FakeBackend, Record};
use crate::interrupt::Deadline;
use crate::log::Logger;
use crate::transport::shell::Shell;

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A fresh tmp dir for one machine (deleted by the guard).
pub(super) struct TmpDir(pub(super) PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A machine over `backend`, with what happens to it, and its tmp dir.
pub(super) struct Fixture {
    pub(super) m: Machine,
    pub(super) record: Arc<Record>,
    pub(super) _tmp: TmpDir,
}

fn machine_with(backend: FakeBackend, boot_timeout: Option<Duration>) -> Fixture {
    machine_over(backend, boot_timeout, crate::config::Transport::Auto)
}

/// A machine over `backend` with the transport choice `transport`.
pub(super) fn machine_over(
    backend: FakeBackend,
    boot_timeout: Option<Duration>,
    transport: crate::config::Transport,
) -> Fixture {
    let n = DIRS.fetch_add(1, Ordering::SeqCst);
    let tmp = std::env::temp_dir().join(format!("ntng-machine-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let info = MachineInfo {
        name: "m".to_string(),
        logger: Arc::new(Logger::default()),
        state_dir: tmp.join("vm-state-m"),
        shared_dir: tmp.join("shared-xchg"),
        out_dir: tmp.clone(),
        boot_timeout,
        env: Vec::new(),
        vnc: false,
        transport,
        node: 1,
        boot_cache: None,
    };
    let record = backend.record.clone();
    let m = Machine::new(info, Box::new(backend), false).unwrap();
    Fixture {
        m,
        record,
        _tmp: TmpDir(tmp),
    }
}

fn machine(before: &str) -> Fixture {
    machine_with(FakeBackend::new(before), Some(Duration::from_secs(30)))
}

fn run(m: &Machine, command: &str) -> (i32, String) {
    m.execute(command, ExecOptions::default()).unwrap()
}

#[test]
fn the_lifecycle_from_off_to_up_and_back() {
    let Fixture { m, record, _tmp } = machine("true");
    assert_eq!(m.state(), State::Off);
    assert!(!m.booted() && m.pid().is_none() && m.process().is_none());

    m.start(false).unwrap();
    assert_eq!(m.state(), State::Booting);
    assert!(m.booted() && !m.connected() && m.pid().is_some());
    m.start(false).unwrap(); // started already: nothing happens
    assert_eq!(record.launches.load(Ordering::SeqCst), 1);

    m.connect().unwrap();
    assert_eq!(m.state(), State::Up);
    assert!(m.is_up());
    assert_eq!(run(&m, "echo hi; exit 3"), (3, "hi\n".to_string()));

    let process = m.process().unwrap();
    m.shutdown().unwrap();
    assert_eq!(m.state(), State::Off);
    assert!(!m.booted() && !m.connected() && m.pid().is_none());
    // the kind keeps its last process, as upstream's QemuMachine
    assert_eq!(m.process().unwrap().pid(), process.pid());
    assert_eq!(process.exit_status().unwrap().code(), Some(0));
    assert_eq!(*record.stops.lock().unwrap(), [false]);
    assert!(m.console_log().contains("fake console: booted"));
}

#[test]
fn a_command_starts_and_connects_the_machine() {
    let Fixture { m, record, _tmp } = machine("true");
    assert_eq!(run(&m, "echo up"), (0, "up\n".to_string()));
    assert_eq!(m.state(), State::Up);
    assert_eq!(record.launches.load(Ordering::SeqCst), 1);
    m.release();
}

#[test]
fn a_new_handshake_after_mark_disconnected_comes_on_the_same_stream() {
    let Fixture { m, record, _tmp } = machine("true");
    m.connect().unwrap();
    m.mark_disconnected();
    assert_eq!(m.state(), State::Booting);
    // the guest's next shell says hello, as after a reboot
    m.send_to_shell(b"echo 'Spawning backdoor root shell...'\n")
        .unwrap();
    m.connect().unwrap();
    assert_eq!(m.state(), State::Up);
    assert_eq!(run(&m, "echo again"), (0, "again\n".to_string()));
    assert_eq!(record.launches.load(Ordering::SeqCst), 1);
    m.release();
}

#[test]
fn the_boot_cache_saves_a_launch_at_its_first_handshake_only() {
    let Fixture { m, record, _tmp } =
        machine_with(FakeBackend::new("true").with_boot_cache(), None);
    let saves = || record.boot_saves.load(Ordering::SeqCst);
    m.connect().unwrap();
    assert_eq!(saves(), 1);
    assert_eq!(run(&m, "echo up"), (0, "up\n".to_string()));
    // a new handshake of the same launch (as after a reboot) is not its first
    m.mark_disconnected();
    m.send_to_shell(b"echo 'Spawning backdoor root shell...'\n")
        .unwrap();
    m.connect().unwrap();
    assert_eq!(saves(), 1);
    // the next launch is saved again (the cache decides at each launch)
    m.release();
    m.start(false).unwrap();
    m.connect().unwrap();
    assert_eq!(saves(), 2);
    m.release();
}

#[test]
fn a_launch_that_hands_over_a_shell_in_step_needs_no_handshake() {
    // as a VM started from the boot cache: connect() launches it and is done (with a
    // handshake to wait for, it would run out of boot time: the guest says hello only once)
    let backend = FakeBackend::new("true").in_step().with_boot_cache();
    let Fixture { m, record, _tmp } = machine_with(backend, Some(Duration::from_secs(20)));
    m.connect().unwrap();
    assert_eq!(m.state(), State::Up);
    assert_eq!(run(&m, "echo up"), (0, "up\n".to_string()));
    // no first handshake: nothing to save
    assert_eq!(record.boot_saves.load(Ordering::SeqCst), 0);
    m.release();
}

#[test]
fn an_ended_process_is_exited_until_waited_for() {
    let Fixture { m, record, _tmp } = machine("true");
    m.connect().unwrap();
    let process = m.process().unwrap();
    m.send_to_shell(b"exit 5\n").unwrap();
    assert_eq!(process.wait(Deadline::NEVER).unwrap().code(), Some(5));
    assert_eq!(m.state(), State::Exited);
    assert!(
        m.booted(),
        "a VM-like kind stays booted until someone waits"
    );
    let e = m.execute("true", ExecOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Guest { message, .. }
            if message.contains("stopped while running `true` (fake exited with status 5)")),
        "{e}"
    );
    m.wait_for_shutdown().unwrap();
    assert_eq!(m.state(), State::Off);
    assert_eq!(*record.stops.lock().unwrap(), [false]);
}

#[test]
fn release_kills_the_process_group_and_frees_the_launch() {
    // a child of the machine's process, in its process group
    let Fixture { m, record, _tmp } = machine("sleep 600 >/dev/null 2>&1 & echo \"child $!\" >&2");
    m.connect().unwrap();
    let mut child = 0u32;
    let outcome = m
        .console()
        .wait_for_text(
            Deadline::after(Some(Duration::from_secs(30))),
            &mut |text| {
                child = text
                    .split("child ")
                    .nth(1)
                    .and_then(|p| p.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                Ok(child != 0)
            },
        )
        .unwrap();
    assert_eq!(
        outcome,
        crate::console::WaitOutcome::Matched,
        "{}",
        m.console_log()
    );
    let process = m.process().unwrap();
    m.release();
    assert_eq!(m.state(), State::Off);
    assert!(process.exit_status().is_some());
    // gone, or a zombie nobody reaped yet
    let child_alive = || {
        std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.starts_with(" Z"))
        })
    };
    let gone = Deadline::after(Some(Duration::from_secs(10)));
    while child_alive() && !gone.expired() {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !child_alive(),
        "the machine's child {child} survived release"
    );
    assert_eq!(*record.stops.lock().unwrap(), [true]);
    m.release(); // released already: nothing happens
    assert_eq!(record.stops.lock().unwrap().len(), 1);
}

#[test]
fn a_guest_that_dies_while_booting() {
    let Fixture { m, _tmp, .. } = machine("echo 'the guest is dying' >&2; exit 3");
    let e = m.connect().unwrap_err();
    let (message, console_tail) = guest_failure(&e);
    assert_eq!(
        message,
        "the machine stopped before the backdoor handshake (fake exited with status 3)"
    );
    assert!(
        console_tail.iter().any(|l| l == "the guest is dying"),
        "{e}"
    );
    m.release();
}

#[test]
fn a_guest_that_never_answers_runs_out_of_boot_time() {
    let Fixture { m, _tmp, .. } = machine_with(
        FakeBackend::new("sleep 600"),
        Some(Duration::from_millis(300)),
    );
    let e = m.connect().unwrap_err();
    assert!(
        matches!(&e, Error::Guest { message, .. }
            if message.starts_with("no backdoor handshake within 0 s of the start")),
        "{e}"
    );
    assert_eq!(m.state(), State::Booting);
    m.release();
    assert_eq!(m.state(), State::Off);
}

#[test]
fn a_missing_capability_is_unsupported() {
    let Fixture { m, _tmp, .. } = machine("true");
    m.connect().unwrap();
    let cases: Vec<(&str, Error, &str)> = vec![
        ("screenshot", m.screenshot("x").unwrap_err(), "no display"),
        (
            "send_monitor_command",
            m.send_monitor_command("info status").unwrap_err(),
            "no QEMU monitor or QMP",
        ),
        (
            "send_key",
            m.send_key("a", None, true).unwrap_err(),
            "no keyboard",
        ),
        ("block", m.block().unwrap_err(), "no NIC links to cut"),
        (
            "snapshot",
            m.snapshot("s").unwrap_err(),
            "it cannot save a running machine",
        ),
        (
            "switch_root",
            m.switch_root().unwrap_err(),
            "no initrd stage: switch_root needs a QEMU machine",
        ),
        (
            "get_systemd_process",
            m.systemd_process().unwrap_err(),
            "not a container",
        ),
        (
            "vmm_metrics",
            m.vmm_metrics().unwrap_err(),
            "no VMM metrics: only Firecracker writes them",
        ),
    ];
    for (op, e, reason) in cases {
        assert_eq!(
            e.to_string(),
            format!("m: {op}: not supported by the fake backend ({reason})")
        );
        assert!(
            matches!(&e, Error::Unsupported { machine, operation, backend, .. }
                if machine == "m" && operation == op && backend == "fake"),
            "{e:?}"
        );
    }
    assert!(!m.wait_for_standby(None).unwrap());
    // the machine is unharmed
    assert_eq!(run(&m, "echo still"), (0, "still\n".to_string()));
    m.release();
}

#[test]
fn a_snapshot_of_a_machine_whose_restart_is_its_reset_is_a_restart() {
    let Fixture { m, record, _tmp } = machine_with(
        FakeBackend::new("true").restart_resets(),
        Some(Duration::from_secs(30)),
    );
    m.start(false).unwrap();
    m.snapshot("ready").unwrap();
    assert_eq!(m.snapshot_names(), ["ready"]);
    run(&m, "touch /tmp/ntng-fake-marker-$PPID");
    let first = m.pid();
    m.restore("ready").unwrap();
    assert_eq!(m.state(), State::Up);
    assert_ne!(m.pid(), first);
    assert_eq!(record.launches.load(Ordering::SeqCst), 2);
    let e = m.restore("other").unwrap_err();
    assert!(
        e.to_string()
            .contains("no snapshot named \"other\" (taken: ready)"),
        "{e}"
    );
    m.release();
}

#[test]
fn adopting_a_launch_replaces_the_running_one() {
    let Fixture { m, record, _tmp } = machine("true");
    let _ = &record;
    m.connect().unwrap();
    let old = m.process().unwrap();
    // a second launch, brought in step by hand (as a warm standby is)
    let mut launched = m.backend.launch(&m, LaunchOptions::default()).unwrap();
    let stream = launched.connector.connect(Deadline::NEVER).unwrap();
    let mut shell = Shell::new(stream);
    shell
        .wait_for_handshake(Deadline::after(Some(Duration::from_secs(30))), &mut || true)
        .unwrap();
    let new_pid = launched.process.pid();
    launched.shell_in_step = Some(shell);
    m.adopt(launched);
    assert!(old.exit_status().is_some(), "the old launch was not killed");
    assert_eq!(m.pid(), Some(new_pid));
    assert_eq!(
        m.state(),
        State::Up,
        "an adopted shell in step needs no handshake"
    );
    assert_eq!(run(&m, "echo adopted"), (0, "adopted\n".to_string()));
    m.release();
    assert_eq!(m.state(), State::Off);
}

#[test]
fn a_stream_that_dies_before_its_handshake_is_replaced_when_the_connector_reconnects() {
    let Fixture { m, record, _tmp } = machine_with(
        FakeBackend::new("true").reconnecting(),
        Some(Duration::from_secs(30)),
    );
    m.connect().unwrap();
    assert_eq!(m.state(), State::Up);
    assert_eq!(record.connects.load(Ordering::SeqCst), 2);
    assert_eq!(record.abandoned.load(Ordering::SeqCst), 1);
    assert_eq!(run(&m, "echo second"), (0, "second\n".to_string()));
    // a new handshake asks the connector for a new stream
    m.mark_disconnected();
    m.connect().unwrap();
    assert_eq!(record.connects.load(Ordering::SeqCst), 3);
    // power off before a handshake: the backend's signal to the process group
    m.mark_disconnected();
    m.shutdown().unwrap();
    assert_eq!(m.state(), State::Off);
    assert_eq!(record.stops.lock().unwrap().len(), 1);
}

/// The message and console tail of a guest failure (any other error fails the test).
pub(super) fn guest_failure(e: &Error) -> (&String, &Vec<String>) {
    let Error::Guest {
        message,
        console_tail,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    (message, console_tail)
}
