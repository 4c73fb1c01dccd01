//! EXEC against the agent as a local process.

mod support;

use agent_protocol::{Exit, Kind, Signal};
use support::{process_gone, wait_gone, Agent, KillOnDrop, Outcome};

#[test]
fn exit_status_and_the_two_streams_are_kept_apart() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let out = c.run("echo out; echo err >&2; echo more; exit 3");
    assert_eq!(out.stdout, b"out\nmore\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(
        out.exit(),
        Exit {
            status: 3,
            signal: None,
            timed_out: false
        }
    );
    let out = c.run("true");
    assert_eq!(out.exit().status, 0);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn a_command_killed_by_a_signal_has_128_plus_the_signal() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // The warm shell reports `$?`: the status only.
    let out = c.run("kill -9 $BASHPID");
    assert_eq!(
        out.exit(),
        Exit {
            status: 137,
            signal: None,
            timed_out: false
        }
    );
    // Its own bash -c: the agent reaps it and also names the signal.
    let agent = Agent::start_cold();
    let mut c = agent.connect();
    let out = c.run("kill -9 $$");
    assert_eq!(
        out.exit(),
        Exit {
            status: 137,
            signal: Some(9),
            timed_out: false
        }
    );
}

#[test]
fn output_that_is_not_utf8_or_has_nul_bytes_comes_through_exactly() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let out = c.run(r"printf 'a\000b\377\376\n'; printf '\000\200' >&2");
    assert_eq!(out.stdout, b"a\0b\xff\xfe\n");
    assert_eq!(out.stderr, b"\0\x80");
    assert_eq!(out.exit().status, 0);
}

#[test]
fn twenty_megabytes_of_output_arrive_whole() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let out = c.run("head -c 20000000 /dev/zero | tr '\\0' x; echo; echo done >&2");
    assert_eq!(out.stdout.len(), 20_000_001);
    assert!(out.stdout[..20_000_000].iter().all(|b| *b == b'x'));
    assert_eq!(out.stderr, b"done\n");
    assert_eq!(out.exit().status, 0);
    // Streamed in many frames, not collected into one.
    assert!(out.frames > 10, "{} frames", out.frames);
}

#[test]
fn a_timeout_kills_the_group_and_exits_124() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // The background sleep is in the command's group: it is killed too.
    c.start("sleep 100 & echo $!; wait", Some(300), false);
    let mut out = Outcome::default();
    c.pump(&mut out, |_| false);
    assert_eq!(
        out.exit(),
        Exit {
            status: 124,
            signal: None,
            timed_out: true
        }
    );
    let pid: i32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = KillOnDrop(pid);
    assert!(
        wait_gone(pid),
        "the background sleep {pid} survived the timeout"
    );
    assert_eq!(c.run("echo still here").stdout, b"still here\n");
}

/// Waits until a process runs with exactly this command line (NUL-separated).
fn wait_for_cmdline(cmdline: &[u8]) {
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == cmdline) {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn signal_2_interrupts_a_sleep() {
    for (n, (agent, signal)) in [(Agent::start(), None), (Agent::start_cold(), Some(2))]
        .into_iter()
        .enumerate()
    {
        let mut c = agent.connect();
        // the agent was started with SIGINT ignored (see support): its commands are not
        let status = c.run("grep '^SigIgn:' /proc/self/status").stdout;
        let ignored = u64::from_str_radix(String::from_utf8_lossy(&status)[7..].trim(), 16);
        assert_eq!(
            ignored.unwrap() & (1 << (libc::SIGINT - 1)),
            0,
            "{status:?}"
        );
        // a duration no other test uses: the signal goes to this very sleep, not to the
        // shell before its exec
        let duration = format!("100.{}{n}", std::process::id());
        c.start(&format!("exec sleep {duration}"), None, false);
        wait_for_cmdline(format!("sleep\0{duration}\0").as_bytes());
        let mut out = Outcome::default();
        c.send_json(
            Kind::Signal,
            &Signal {
                signal: libc::SIGINT,
            },
        );
        c.pump(&mut out, |_| false);
        assert_eq!(
            out.exit(),
            Exit {
                status: 130,
                signal,
                timed_out: false
            }
        );
    }
}

#[test]
fn stdin_is_streamed_to_the_command_and_closed_by_an_empty_frame() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.start("cat", None, true);
    c.send(Kind::Stdin, b"hello ");
    let mut out = Outcome::default();
    // The first chunk comes back before stdin is closed: it streams.
    c.pump(&mut out, |o| o.stdout == b"hello ");
    assert!(out.exit.is_none());
    c.send(Kind::Stdin, b"world\0\xff");
    c.send(Kind::Stdin, b"");
    c.pump(&mut out, |_| false);
    assert_eq!(out.stdout, b"hello world\0\xff");
    assert_eq!(out.exit().status, 0);
}

#[test]
fn without_stdin_the_command_reads_dev_null() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let out = c.run("cat; echo end");
    assert_eq!(out.stdout, b"end\n");
}

#[test]
fn a_background_child_holding_stdout_does_not_hold_the_exit() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let out = c.run("sleep 100 & echo $!");
    assert_eq!(out.exit().status, 0);
    let pid: i32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = KillOnDrop(pid);
    assert!(!process_gone(pid), "the background child keeps running");
    // The connection serves the next request.
    assert_eq!(c.run("echo next").stdout, b"next\n");
}

#[test]
fn two_connections_run_commands_at_once() {
    let agent = Agent::start();
    let mut a = agent.connect();
    let mut b = agent.connect();
    // A blocks on its stdin until it is closed; B runs to the end meanwhile.
    a.start("echo a-started; cat", None, true);
    let mut out_a = Outcome::default();
    a.pump(&mut out_a, |o| o.stdout == b"a-started\n");
    let out_b = b.run("echo b");
    assert_eq!(out_b.stdout, b"b\n");
    assert_eq!(out_b.exit().status, 0);
    assert!(out_a.exit.is_none());
    a.send(Kind::Stdin, b"");
    a.pump(&mut out_a, |_| false);
    assert_eq!(out_a.exit().status, 0);
}

#[test]
fn closing_the_connection_mid_command_kills_the_command() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.start("sleep 100 & echo $!; wait", None, false);
    let mut out = Outcome::default();
    c.pump(&mut out, |o| o.stdout.ends_with(b"\n"));
    let pid: i32 = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = KillOnDrop(pid);
    drop(c);
    // The agent kills the group when it sees the connection close.
    assert!(
        wait_gone(pid),
        "the command's background sleep {pid} survived"
    );
    let mut d = agent.connect();
    assert_eq!(d.run("echo ok").stdout, b"ok\n");
}
