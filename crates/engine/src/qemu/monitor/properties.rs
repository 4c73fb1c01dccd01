//! Property tests of the HMP reader: whatever QEMU's monitor sends, `wait_for_prompt`
//! returns what came up to the prompt (or the end) and never panics.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;

use super::{Monitor, PROMPT};
use crate::fuzz;
use crate::interrupt::Deadline;

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        Just(PROMPT.to_vec()),
        "[(qemu) \r\n]{0,16}".prop_map(String::into_bytes),
    ]
}

#[test]
fn monitor_output_is_read_up_to_the_prompt_or_the_end() {
    proptest!(fuzz::config(256), |(pieces in proptest::collection::vec(piece(), 0..8))| {
        let wire = pieces.concat();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&wire).unwrap();
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        let got = Monitor::new(ours, "m")
            .wait_for_prompt(Deadline::after(Some(Duration::from_secs(60))))
            .unwrap();
        // a prefix of what was sent, ending at a prompt unless it is all of it
        let expected_all = String::from_utf8_lossy(&wire).into_owned();
        if std::str::from_utf8(&wire).is_ok() {
            prop_assert!(expected_all.starts_with(&got));
        }
        prop_assert!(got == expected_all || got.as_bytes().ends_with(PROMPT), "{got:?}");
    });
}

#[test]
fn an_answer_without_a_prompt_is_refused_at_the_bound_naming_the_machine() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        while theirs.write_all(&chunk).is_ok() {}
    });
    let err = Monitor::new(ours, "hostile")
        .wait_for_prompt(Deadline::NEVER)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hostile") && err.contains("without a prompt"),
        "{err}"
    );
    peer.join().unwrap();
}
