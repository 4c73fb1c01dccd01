//! The TCP listener (`--listen tcp:ADDR:PORT`, the VMM stand-ins' hybrid vsock over QEMU's
//! user-mode network), beside a unix one.

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};

use support::Agent;

#[test]
fn a_tcp_listener_serves_the_protocol_beside_a_unix_one() {
    let agent = Agent::start_tcp("127.0.0.1:0");
    let log = agent.log();
    assert!(
        log.contains("listening on unix:") && log.contains("listening on tcp:127.0.0.1:"),
        "{log}"
    );
    let mut first = agent.connect_tcp();
    let mut second = agent.connect_tcp();
    let mut unix = agent.connect();
    assert_eq!(first.run("echo one").stdout, b"one\n");
    let out = second.run("echo two >&2; exit 3");
    assert_eq!(
        (out.stderr.as_slice(), out.exit().status),
        (&b"two\n"[..], 3)
    );
    assert_eq!(unix.run("echo unix").stdout, b"unix\n");
    // each connection keeps serving requests
    assert!(first.ping().monotonic_ns > 0);
}

#[test]
fn a_tcp_address_that_is_not_up_yet_is_listened_on() {
    // 192.0.2.1 (TEST-NET-1) is on none of this host's interfaces: IP_FREEBIND binds it anyway,
    // as the systemd guest's agent binds 10.0.2.15 before its NIC has the address.
    let mut agent = Agent::start_tcp("192.0.2.1:0");
    assert_eq!(agent.tcp.unwrap().ip().to_string(), "192.0.2.1");
    assert!(agent.alive());
    assert_eq!(agent.connect().run("echo still").stdout, b"still\n");
}

#[test]
fn a_port_in_use_is_an_error_naming_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-test-ng-agent"))
        .arg(format!("--listen=tcp:{addr}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on tcp:{addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn a_bad_tcp_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-test-ng-agent"))
        .args(["--listen", "tcp:10.0.2.15"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"tcp:10.0.2.15\" is not tcp:ADDR:PORT"),
        "{stderr}"
    );
}
