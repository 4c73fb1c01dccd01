//! The connection itself: HELLO, PING, and what the agent does with a client that breaks the
//! protocol.

mod support;

use agent_protocol::Kind;
use support::Agent;

#[test]
fn ping_answers_both_clocks() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let a = c.ping();
    let b = c.ping();
    assert!(a.realtime_ns > 0);
    assert!(b.monotonic_ns >= a.monotonic_ns);
}

#[test]
fn garbage_drops_that_connection_and_the_agent_keeps_serving() {
    let mut agent = Agent::start();
    let cases: [&[u8]; 4] = [
        // An unknown kind.
        &[0x7f, 0, 0, 0, 0],
        // An oversized length (4 GiB): refused from the header, nothing allocated.
        &[Kind::Exec as u8, 0xff, 0xff, 0xff, 0xff],
        // A request whose JSON body is not the message.
        &[Kind::Exec as u8, 2, 0, 0, 0, b'{', b'}'],
        // An agent-to-host kind sent to the agent.
        &[Kind::Exit as u8, 0, 0, 0, 0],
    ];
    for garbage in cases {
        let mut c = agent.connect();
        c.send_raw(garbage);
        assert!(
            c.closed_by_agent(),
            "the agent kept a connection that sent {garbage:?}"
        );
        assert!(agent.alive());
        let mut fresh = agent.connect();
        assert_eq!(fresh.run("echo alive").stdout, b"alive\n");
    }
    assert!(agent.log().contains("dropped"), "{}", agent.log());
}

#[test]
fn a_connection_closed_mid_frame_is_dropped() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    c.send_raw(&[Kind::Exec as u8, 100, 0, 0, 0, b'{']);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed_by_agent());
    assert!(agent.alive());
    agent.connect().ping();
}

#[test]
fn late_stdin_and_signals_between_requests_are_ignored() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.send(Kind::Stdin, b"nobody reads this");
    c.send_json(Kind::Signal, &agent_protocol::Signal { signal: 9 });
    assert_eq!(c.run("echo ok").stdout, b"ok\n");
}
