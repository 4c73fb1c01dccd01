//! The warm shell: commands run as subshells of one long-lived bash per connection.

mod support;

use agent_protocol::Exit;
use support::Agent;

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[test]
fn commands_are_subshells_of_one_shell_and_leave_it_unchanged() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let first = text(c.run("echo $$ $BASHPID").stdout);
    let second = text(c.run("echo $$ $BASHPID").stdout);
    let (shell_1, sub_1) = first.trim().split_once(' ').unwrap();
    let (shell_2, sub_2) = second.trim().split_once(' ').unwrap();
    // `$$` is the long-lived shell (as with upstream's backdoor), each command its own process.
    assert_eq!(shell_1, shell_2);
    assert_ne!(sub_1, sub_2);
    assert_ne!(shell_1, sub_1);
    // Nothing a command does to its shell reaches the next one.
    let out =
        c.run("x=1; export Y=2; cd /; umask 077; set -e; trap 'echo trapped' EXIT; alias q=ls");
    assert_eq!(out.stdout, b"trapped\n");
    let out = c.run("echo \"x=$x Y=$Y\"; pwd; umask; [[ $- == *e* ]] && echo errexit; type q");
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(out.exit().status, 1, "no alias q: `type` fails");
    assert_eq!(
        text(out.stdout),
        format!("x= Y=\n{}\n0022\n", cwd.display())
    );
}

#[test]
fn exit_and_a_syntax_error_end_only_the_command() {
    let agent = Agent::start();
    let mut c = agent.connect();
    assert_eq!(c.run("exit 3").exit().status, 3);
    let out = c.run("if then");
    assert_eq!(out.exit().status, 2);
    assert!(text(out.stderr).contains("syntax error"));
    assert_eq!(c.run("echo next").stdout, b"next\n");
}

#[test]
fn a_killed_shell_fails_that_command_clearly_and_the_next_gets_a_new_one() {
    for kill in ["kill -9 $$", "kill $$"] {
        killed_shell_case(kill);
    }
}

fn killed_shell_case(kill: &str) {
    let agent = Agent::start();
    let mut c = agent.connect();
    let before = text(c.run("echo $$").stdout);
    // As with upstream's backdoor, `$$` is the long-lived shell: killing it loses the
    // command's status (upstream loses the whole machine).
    c.start(&format!("{kill}; sleep 100"), None, false);
    let message = c.expect_error();
    assert!(
        message.contains("shell ended while the command ran") && message.contains("kill -9 $$"),
        "{message}"
    );
    let after = text(c.run("echo $$").stdout);
    assert_ne!(before, after, "a new shell");
    assert_eq!(
        c.run("echo ok").exit(),
        Exit {
            status: 0,
            signal: None,
            timed_out: false
        }
    );
}

#[test]
fn long_and_non_ascii_commands_arrive_whole() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // 200 KB: more than a pipe holds, so the subshell reads while the agent writes.
    let command = format!(
        "v='{}'; echo ${{#v}}; echo héllo wörld",
        "é".repeat(100_000)
    );
    let out = c.run(&command);
    assert_eq!(text(out.stdout), "100000\nhéllo wörld\n");
    let out = c.run("printf '%s' 'a\nb\\c $HOME'");
    assert_eq!(out.stdout, b"a\nb\\c $HOME");
}

#[test]
fn commands_after_a_timeout_and_after_a_background_child_still_run_warm() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let shell = text(c.run("echo $$").stdout);
    c.start("sleep 100", Some(200), false);
    let mut out = support::Outcome::default();
    c.pump(&mut out, |_| false);
    assert!(out.exit().timed_out);
    let out = c.run("sleep 100 >/dev/null 2>&1 & echo $!");
    let pid: i32 = text(out.stdout).trim().parse().unwrap();
    let _guard = support::KillOnDrop(pid);
    assert_eq!(
        text(c.run("echo $$").stdout),
        shell,
        "the same shell all along"
    );
}

#[test]
fn a_connection_closed_leaves_no_shell_behind() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let shell: i32 = text(c.run("echo $$").stdout).trim().parse().unwrap();
    drop(c);
    assert!(
        support::wait_gone(shell),
        "the warm shell {shell} outlived its connection"
    );
}

#[test]
fn a_stopped_command_is_still_running_until_continued() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.start(
        "echo $BASHPID; kill -STOP $BASHPID; echo resumed; exit 5",
        None,
        false,
    );
    let mut out = support::Outcome::default();
    c.pump(&mut out, |o| o.stdout.ends_with(b"\n"));
    let pid: i32 = text(out.stdout.clone()).trim().parse().unwrap();
    // The event: the subshell is stopped (state T), then it gets SIGCONT.
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
    };
    let start = std::time::Instant::now();
    while !stopped() {
        assert!(
            start.elapsed() < support::HANG,
            "the subshell never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    c.send_json(
        agent_protocol::Kind::Signal,
        &agent_protocol::Signal {
            signal: libc::SIGCONT,
        },
    );
    c.pump(&mut out, |_| false);
    assert_eq!(out.exit().status, 5, "{out:?}");
    assert_eq!(text(out.stdout), format!("{pid}\nresumed\n"));
}

#[test]
fn the_shell_dies_with_a_killed_agent() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let shell: i32 = text(c.run("echo $$").stdout).trim().parse().unwrap();
    drop(agent); // SIGKILL, with the connection still open
    assert!(
        support::wait_gone(shell),
        "the warm shell {shell} outlived a killed agent"
    );
}
