//! Property tests of the QMP reader: whatever lines QEMU sends around the greeting and the
//! replies, connecting answers or fails with a QMP or I/O error, never panics, and the events
//! among the lines are queued in order.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;

use super::Qmp;
use crate::error::Error;
use crate::fuzz;
use crate::interrupt::Deadline;
use crate::vmm::test_dir::TestDir;

const GREETING: &str = r#"{"QMP": {"version": {}, "capabilities": []}}"#;
const REPLY: &str = r#"{"return": {}, "id": 1}"#;

/// A line QEMU might send: an event, a stray reply, JSON that is not an object, noise.
fn line() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        "[a-zA-Z_]{1,12}".prop_map(|e| format!(r#"{{"event": "{e}", "data": {{}}}}"#).into_bytes()),
        (2u64..9).prop_map(|id| format!(r#"{{"return": 5, "id": {id}}}"#).into_bytes()),
        Just(b"[1, 2]".to_vec()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        proptest::collection::vec(
            // no newline (a map, not a filter: rejections add up over millions of cases)
            any::<u8>().prop_map(|b| if b == b'\n' { b' ' } else { b }),
            0..64
        ),
    ]
}

/// Serves `wire` to one client on `path` and reads what the client sends until it hangs up.
fn serve(listener: UnixListener, wire: Vec<u8>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(&wire);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    })
}

#[test]
fn qmp_lines_are_replies_events_or_ignored() {
    let dir = TestDir::new();
    let greeting = prop_oneof![Just(GREETING.as_bytes().to_vec()), line()];
    let lines = proptest::collection::vec(line(), 0..8);
    proptest!(fuzz::config(64), |(greeting in greeting, before in lines.clone(), after in lines)| {
        let path = dir.path().join("qmp");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let mut wire = Vec::new();
        for l in std::iter::once(&greeting).chain(&before).chain([&REPLY.as_bytes().to_vec()]).chain(&after) {
            wire.extend_from_slice(l);
            wire.push(b'\n');
        }
        let peer = serve(listener, wire);
        let result = Qmp::connect(&path, "m", Deadline::after(Some(Duration::from_secs(60))));
        let clean = |l: &Vec<u8>| std::str::from_utf8(l).is_ok();
        match result {
            Ok(qmp) => {
                prop_assert!(String::from_utf8_lossy(&greeting).contains("QMP"));
                let expected: Vec<Value> = before
                    .iter()
                    .chain(&after)
                    .take_while(|l| clean(l))
                    .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
                    .filter(|v| v.get("event").is_some())
                    .collect();
                let mut got = Vec::new();
                let deadline = Deadline::after(Some(Duration::from_secs(60)));
                while got.len() < expected.len() {
                    match qmp.next_event(deadline).unwrap() {
                        Some(v) => got.push(v),
                        None => break,
                    }
                }
                prop_assert_eq!(got, expected);
            }
            Err(e) => {
                let known = matches!(e, Error::Qmp { .. } | Error::Io { .. });
                prop_assert!(known, "{e:?}");
                // only a bad greeting or a line that is not UTF-8 before the reply fails it
                let broken = !String::from_utf8_lossy(&greeting).contains("QMP")
                    || !clean(&greeting)
                    || !before.iter().all(clean);
                prop_assert!(broken, "{e:?}");
            }
        }
        peer.join().unwrap();
    });
}

#[test]
fn a_line_without_end_fails_the_next_command_naming_the_machine() {
    let dir = TestDir::new();
    let path = dir.path().join("qmp");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(format!("{GREETING}\n{REPLY}\n").as_bytes())
            .unwrap();
        // endless garbage: the reader must give up at the bound, not buffer it all
        let chunk = vec![b'{'; 1 << 20];
        while s.write_all(&chunk).is_ok() {}
    });
    let qmp = Qmp::connect(
        &path,
        "hostile",
        Deadline::after(Some(Duration::from_secs(60))),
    )
    .unwrap();
    let err = qmp
        .execute("query-status", None, Deadline::NEVER)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hostile") && err.contains("without a newline"),
        "{err}"
    );
    drop(qmp);
    peer.join().unwrap();
}

#[test]
fn a_greeting_without_end_is_refused_naming_the_machine() {
    let dir = TestDir::new();
    let path = dir.path().join("qmp");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let chunk = vec![b'Q'; 1 << 20];
        while s.write_all(&chunk).is_ok() {}
    });
    let err = Qmp::connect(
        &path,
        "hostile",
        Deadline::after(Some(Duration::from_secs(60))),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("hostile") && err.contains("without a newline"),
        "{err}"
    );
    peer.join().unwrap();
}
