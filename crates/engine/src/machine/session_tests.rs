//! The machine's commands over both sessions, the backdoor shell and the guest agent (the real
//! `nixos-test-ng-agent` as a local process, see `fake::agent_bin`): the same assertions on
//! each, then what only the agent does (copies, its faults, the transport choice).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use super::tests::{guest_failure, machine_over, Fixture};
use super::{ExecOptions, Machine, State};
use crate::config::Transport;
use crate::error::Error;
use crate::fake::FakeBackend;
use crate::interrupt::Deadline;

const BOOT: Option<Duration> = Some(Duration::from_secs(60));

/// A fake machine whose commands go through the backdoor (`false`) or the agent (`true`).
fn session(agent: bool) -> Fixture {
    let backend = if agent {
        FakeBackend::new("true").with_agent()
    } else {
        FakeBackend::new("true")
    };
    let f = machine_over(backend, BOOT, Transport::Auto);
    f.m.connect().unwrap();
    assert_eq!(f.m.shell.has_agent(), agent);
    f
}

fn both(check: impl Fn(&Machine)) {
    for agent in [false, true] {
        let f = session(agent);
        check(&f.m);
        f.m.release();
    }
}

fn run(m: &Machine, command: &str) -> (i32, String) {
    m.execute(command, ExecOptions::default()).unwrap()
}

fn opts(check_return: bool, check_output: bool) -> ExecOptions {
    ExecOptions {
        check_return,
        check_output,
        ..Default::default()
    }
}

#[test]
fn statuses_output_and_upstreams_check_flags() {
    both(|m| {
        assert_eq!(run(m, "echo hi; exit 3"), (3, "hi\n".to_string()));
        assert_eq!(run(m, "false; echo not reached").0, 1);
        // the preamble: set -euo pipefail
        assert_eq!(run(m, "echo $UNSET_VARIABLE").0, 1);
        assert_eq!(run(m, "false | true").0, 1);
        assert_eq!(run(m, "if then").0, 2);
        assert_eq!(
            m.succeed(&["echo a".into(), "printf b".into()], None)
                .unwrap(),
            "a\nb"
        );
        let e = m.succeed(&["echo out; exit 4".into()], None).unwrap_err();
        assert!(
            matches!(&e, Error::CommandFailed { status: 4, output, .. } if output == "out\n"),
            "{e:?}"
        );
        assert_eq!(m.fail(&["exit 1".into()], None).unwrap(), "");
        assert_eq!(
            m.execute("echo x; exit 5", opts(false, true)).unwrap(),
            (-1, "x\n".to_string())
        );
        assert_eq!(
            m.execute("echo x", opts(true, false)).unwrap(),
            (-2, String::new())
        );
        // the command after one not waited for reads its own answer
        assert_eq!(run(m, "echo mine"), (0, "mine\n".to_string()));
        // the working directory and state do not leak between commands
        run(m, "cd /; X=1");
        assert_eq!(run(m, "pwd; echo ${X:-unset}").1, "/tmp\nunset\n");
        // output that is not UTF-8 arrives as upstream decodes it
        assert_eq!(run(m, "printf 'a\\xff\\x00b'").1, "a\u{fffd}\0b");
    });
}

#[test]
fn stderr_is_shown_as_console_lines() {
    both(|m| {
        assert_eq!(
            run(
                m,
                "echo to-stdout; echo to-stderr-1 >&2; printf partial >&2"
            ),
            (0, "to-stdout\n".to_string())
        );
        // the agent shows a last line without its newline when the command ends; the
        // backdoor's console reader shows it once the line is complete
        let expected = if m.shell.has_agent() {
            "to-stderr-1\npartial"
        } else {
            "to-stderr-1"
        };
        let deadline = Deadline::after(Some(Duration::from_secs(30)));
        while !m.console_log().contains(expected) && !deadline.expired() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(m.console_log().contains(expected), "{}", m.console_log());
    });
}

#[test]
fn the_guest_side_timeout_is_status_124() {
    both(|m| {
        let (status, _) = m
            .execute(
                "sleep 10",
                ExecOptions::with_timeout(Some(Duration::from_secs(1))),
            )
            .unwrap();
        assert_eq!(status, 124);
        assert_eq!(run(m, "echo after"), (0, "after\n".to_string()));
    });
}

#[test]
fn twenty_megabytes_of_output() {
    both(|m| {
        let (status, out) = run(m, "head -c 20000000 /dev/zero | tr '\\0' a");
        assert_eq!((status, out.len()), (0, 20_000_000));
        assert!(out.bytes().all(|b| b == b'a'));
    });
}

#[test]
fn interactive_commands_stream_and_return_their_status() {
    both(|m| {
        let mut seen = Vec::new();
        let status = m
            .interact_command("echo one; echo two >&2; exit 3", &mut |b| {
                seen.extend_from_slice(b)
            })
            .unwrap();
        assert_eq!(status, 3);
        let mut lines: Vec<&[u8]> = seen.split(|&b| b == b'\n').collect();
        lines.sort();
        assert_eq!(lines, [&b""[..], b"one", b"two"]);
        assert_eq!(run(m, "echo after"), (0, "after\n".to_string()));
    });
}

#[test]
fn power_off_through_either_session() {
    for agent in [false, true] {
        let f = session(agent);
        let process = f.m.process().unwrap();
        f.m.shutdown().unwrap();
        assert_eq!(f.m.state(), State::Off);
        assert!(process.exit_status().is_some());
    }
}

/// A scratch directory beside the machine's, deleted by the guard.
fn scratch(f: &Fixture, name: &str) -> std::path::PathBuf {
    let dir = f._tmp.0.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn copies_through_the_agent_land_where_upstreams_do() {
    let f = session(true);
    let m = &f.m;
    let host = scratch(&f, "host");
    let guest = scratch(&f, "guest");
    let g = guest.display().to_string();
    // a tree: a file with its mode, a subdirectory, a link kept as a link
    let tree = host.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::write(tree.join("sub/data"), vec![7u8; 3 * 1024 * 1024 + 5]).unwrap();
    std::os::unix::fs::symlink("../run.sh", tree.join("sub/link")).unwrap();

    // into an existing directory: <target>/<name>, as `cp -r`
    m.copy_from_host(&tree, &g).unwrap();
    assert_eq!(
        std::fs::read(guest.join("tree/sub/data")).unwrap(),
        vec![7u8; 3 * 1024 * 1024 + 5]
    );
    assert_eq!(mode(&guest.join("tree/run.sh")), 0o751);
    assert_eq!(
        std::fs::read_link(guest.join("tree/sub/link")).unwrap(),
        Path::new("../run.sh")
    );
    // to a path that does not exist: the path itself, its parents made
    m.copy_from_host(&tree.join("run.sh"), &format!("{g}/new/dir/script"))
        .unwrap();
    assert_eq!(
        std::fs::read(guest.join("new/dir/script")).unwrap(),
        b"#!/bin/sh\n"
    );
    m.copy_from_host_via_shell(&tree.join("run.sh"), &format!("{g}/via-shell"))
        .unwrap();
    assert_eq!(
        std::fs::read(guest.join("via-shell")).unwrap(),
        b"#!/bin/sh\n"
    );

    // back to the host: <out_dir>/<target_dir>/<name>
    let back = m.copy_from_machine(&format!("{g}/tree"), "copied").unwrap();
    assert_eq!(back, m.info().out_dir.join("copied/tree"));
    assert_eq!(
        std::fs::read(back.join("sub/data")).unwrap().len(),
        3 * 1024 * 1024 + 5
    );
    assert_eq!(mode(&back.join("run.sh")), 0o751);
    assert_eq!(
        std::fs::read_link(back.join("sub/link")).unwrap(),
        Path::new("../run.sh")
    );
    // a missing source is the guest's error, naming the machine
    let e = m
        .copy_from_machine(&format!("{g}/nothing"), "")
        .unwrap_err();
    assert!(
        matches!(&e, Error::Guest { machine, .. } if machine == "m"),
        "{e:?}"
    );
    // the session is still in step
    assert_eq!(run(m, "echo ok"), (0, "ok\n".to_string()));
    m.release();
}

/// The guest plants symlinks where `copy_from_machine` reads and writes: they arrive as
/// links, a link already on the host is replaced rather than written through, and nothing
/// outside the copied tree changes.
#[test]
fn a_planted_symlink_is_copied_as_a_link_and_never_followed() {
    let f = session(true);
    let m = &f.m;
    let outside = scratch(&f, "outside");
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    let guest = scratch(&f, "guest");
    let g = guest.display().to_string();
    let o = outside.display().to_string();
    run(
        m,
        &format!(
            "mkdir -p {g}/tree/esc; echo guest > {g}/tree/esc/secret; \
             ln -s {o} {g}/tree/link; ln -s {o}/secret {g}/tree/file-link; mkfifo {g}/tree/fifo"
        ),
    );
    // a link the host already has where the guest's directory goes
    let dest = m.info().out_dir.join("planted/tree");
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("esc")).unwrap();
    let back = m
        .copy_from_machine(&format!("{g}/tree"), "planted")
        .unwrap();
    assert_eq!(back, dest);
    assert_eq!(std::fs::read_link(back.join("link")).unwrap(), outside);
    assert_eq!(
        std::fs::read_link(back.join("file-link")).unwrap(),
        outside.join("secret")
    );
    assert!(std::fs::symlink_metadata(back.join("esc"))
        .unwrap()
        .is_dir());
    assert_eq!(std::fs::read(back.join("esc/secret")).unwrap(), b"guest\n");
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"host secret"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "something was written outside the tree"
    );
    // the root itself a link: copied as the link
    run(m, &format!("ln -s {o} {g}/root-link"));
    let back = m.copy_from_machine(&format!("{g}/root-link"), "r").unwrap();
    assert_eq!(std::fs::read_link(&back).unwrap(), outside);
    m.release();
}

#[test]
fn the_agent_killed_mid_command_is_an_error_naming_machine_and_command() {
    // a short boot timeout: the reconnect afterwards runs out of it at once
    let f = machine_over(
        FakeBackend::new("true").with_agent(),
        Some(Duration::from_secs(5)),
        Transport::Auto,
    );
    f.m.connect().unwrap();
    let m = &f.m;
    // the command's parent is the agent
    let command = "kill -9 $PPID; sleep 30";
    let e = m.execute(command, ExecOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Guest { machine, .. } if machine == "m")
            && text.contains(&format!("`{command}`")),
        "{e:?}"
    );
    // no hang afterwards either: the agent is gone, the reconnect runs out of boot time
    assert!(m.execute("true", ExecOptions::default()).is_err());
    m.release();
}

/// A test-side agent on a unix socket: sends `hello`, then `then` after the first request
/// arrives, and closes.
/// The HELLO frame of an agent the tests play.
fn test_hello() -> Vec<u8> {
    agent_protocol::encode_json(
        agent_protocol::Kind::Hello,
        &agent_protocol::Hello {
            agent: agent_protocol::AGENT_NAME.into(),
            version: "0.0.0-test".into(),
            protocol: agent_protocol::PROTOCOL_VERSION,
            pid: 1,
            boot_id: None,
        },
    )
    .unwrap()
}

fn bad_agent(path: &Path, then: Vec<u8>) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&test_hello()).unwrap();
        // the whole request, so that closing is a clean end of the stream
        let mut head = [0u8; 5];
        conn.read_exact(&mut head).unwrap();
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        conn.read_exact(&mut vec![0u8; len]).unwrap();
        let _ = conn.write_all(&then);
    })
}

#[test]
fn garbage_truncated_and_oversized_frames_are_clear_errors() {
    let mut stdout = agent_protocol::encode_frame(agent_protocol::Kind::Stdout, b"abcdef");
    stdout.truncate(7);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\x00garbage".to_vec(), "unknown frame kind 0x00"),
        (vec![0x82, 0xff, 0xff, 0xff, 0xff], "exceeds the maximum"),
        (stdout, "ended inside a frame"),
        (
            agent_protocol::encode_frame(agent_protocol::Kind::Exit, b"{not json"),
            "bad EXIT frame body",
        ),
        (
            agent_protocol::encode_frame(agent_protocol::Kind::Pong, b"{}"),
            "PONG",
        ),
    ];
    for (i, (then, expected)) in cases.into_iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("ntng-bad-agent-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let server = bad_agent(&path, then);
        let f = machine_over(
            FakeBackend::new("true").with_agent_at(path.clone()),
            Some(Duration::from_secs(2)),
            Transport::Auto,
        );
        let e = f.m.execute("echo hi", ExecOptions::default()).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, Error::Guest { machine, .. } if machine == "m")
                && text.contains("`echo hi`")
                && text.contains(expected),
            "case {i}: {e}"
        );
        server.join().unwrap();
        f.m.release();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_connection_that_never_says_hello_is_made_again() {
    // vhost-device-vsock can answer `OK` on a connection that then never carries a byte
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("ntng-mute-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mute, _) = listener.accept().unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&test_hello()).unwrap();
        // the mute connection was given up: the driver closed it
        let mut rest = Vec::new();
        (&mute).read_to_end(&mut rest).unwrap();
        rest
    });
    let f = machine_over(
        FakeBackend::new("true").with_agent_at(path.clone()),
        Some(Duration::from_secs(60)),
        Transport::Auto,
    );
    f.m.connect().unwrap();
    assert!(f.m.shell.has_agent());
    // what the driver sent on the mute connection before it gave it up: at most its preamble
    let sent_on_mute = server.join().unwrap();
    assert!(sent_on_mute.len() < 4096, "{}", sent_on_mute.len());
    f.m.release();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_agent_that_never_answers_runs_out_of_boot_time() {
    // built before the clock starts (a first build takes longer than the boot timeout)
    crate::fake::agent_bin();
    let f = machine_over(
        FakeBackend::new("echo 'no agent here' >&2; sleep 600").with_agent(),
        Some(Duration::from_millis(500)),
        Transport::Auto,
    );
    let e = f.m.connect().unwrap_err();
    let (message, console_tail) = guest_failure(&e);
    assert!(
        message.starts_with("no agent handshake within 0 s of the start: the guest's agent (nixos-test-ng-agent) never said hello"),
        "{message}"
    );
    assert!(console_tail.iter().any(|l| l == "no agent here"), "{e}");
    f.m.release();
}

#[test]
fn the_transport_choice() {
    // forced backdoor: the agent the launch set up is not used
    let f = machine_over(
        FakeBackend::new("true").with_agent(),
        BOOT,
        Transport::Backdoor,
    );
    f.m.connect().unwrap();
    assert!(!f.m.shell.has_agent());
    assert_eq!(run(&f.m, "echo b"), (0, "b\n".to_string()));
    f.m.release();
    // forced agent without one: an error naming the machine, nothing left running
    let f = machine_over(FakeBackend::new("true"), BOOT, Transport::Agent);
    let e = f.m.start(false).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidState { machine, message }
            if machine == "m" && message.starts_with("NIXOS_TEST_NG_TRANSPORT=agent, but the fake backend set up no guest agent")),
        "{e:?}"
    );
    assert_eq!(f.m.state(), State::Off);
    assert!(f.m.pid().is_none());
}

#[test]
fn the_agent_session_reconnects_after_a_rewind() {
    let f = session(true);
    let m = &f.m;
    assert_eq!(run(m, "echo before"), (0, "before\n".to_string()));
    m.resync_session(Deadline::after(Some(Duration::from_secs(30))))
        .unwrap();
    assert!(m.connected() && m.shell.has_agent());
    assert_eq!(run(m, "echo after"), (0, "after\n".to_string()));
    m.release();
}

/// Keeps the machine's log lines.
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl crate::event::Reporter for Lines {
    fn event(&mut self, event: &crate::event::Event<'_>) {
        if let crate::event::Event::Line { msg, .. } = *event {
            self.0.lock().unwrap().push(msg.to_string());
        }
    }
}

#[test]
fn the_log_says_which_transport_connected() {
    for agent in [false, true] {
        let backend = if agent {
            FakeBackend::new("true").with_agent()
        } else {
            FakeBackend::new("true")
        };
        let f = machine_over(backend, BOOT, Transport::Auto);
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        f.m.info()
            .logger
            .add_reporter(Box::new(Lines(lines.clone())));
        f.m.connect().unwrap();
        let lines = lines.lock().unwrap().clone();
        let expected = if agent {
            format!(
                "connected to the guest agent (nixos-test-ng-agent {}, protocol 1) over the unix socket {}",
                env!("CARGO_PKG_VERSION"),
                f.m.info().state_dir.join("agent.sock").display()
            )
        } else {
            "connected to guest root shell".to_string()
        };
        assert_eq!(
            lines.iter().filter(|l| **l == expected).count(),
            1,
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("(connecting took ")),
            "{lines:?}"
        );
        f.m.release();
    }
}

#[test]
fn a_lost_agent_connection_fails_its_command_and_the_next_one_reconnects() {
    let f = session(true);
    let m = &f.m;
    assert_eq!(run(m, "echo one"), (0, "one\n".to_string()));
    // the connection goes (the agent lives on)
    m.shell.agent_stream().unwrap().shutdown().unwrap();
    let e = m.execute("echo two", ExecOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("the guest's agent disconnected while running `echo two`"),
        "{e}"
    );
    assert_eq!(m.state(), State::Booting);
    assert_eq!(run(m, "echo three"), (0, "three\n".to_string()));
    assert!(m.shell.has_agent());
    m.release();
}

#[test]
fn a_guest_that_dies_before_its_agent_answers() {
    crate::fake::agent_bin();
    let f = machine_over(
        FakeBackend::new("echo 'the guest is dying' >&2; exit 3").with_agent(),
        BOOT,
        Transport::Auto,
    );
    let e = f.m.connect().unwrap_err();
    let (message, console_tail) = guest_failure(&e);
    assert_eq!(
        message,
        "the machine stopped before the agent handshake (fake exited with status 3)"
    );
    assert!(
        console_tail.iter().any(|l| l == "the guest is dying"),
        "{e}"
    );
    f.m.release();
}
