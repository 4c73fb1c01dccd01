//! Property tests of the HTTP answer reader (the VMMs' API sockets): at every point of its
//! arrival an answer is incomplete, complete or malformed, never a panic, whatever lengths it
//! claims; what a server encodes (a length or chunks) comes back whole, and not before.

use proptest::prelude::*;

use super::{parse, parse_closed, Response};
use crate::fuzz;

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![Just(200u16), Just(204), Just(400), 100u16..600]
}

/// A head as a server (or a broken one) might write it.
fn head() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        any::<u64>().prop_map(|n| format!("Content-Length: {n}")),
        (0u64..64).prop_map(|n| format!("content-length: {n}")),
        Just("Transfer-Encoding: chunked".to_string()),
        "[A-Za-z-]{1,12}: [ -~]{0,20}",
        "[ -~]{0,20}",
    ];
    (
        prop_oneof![
            status().prop_map(|s| format!("HTTP/1.1 {s} X")),
            "[ -~]{0,20}"
        ],
        proptest::collection::vec(header, 0..4),
    )
        .prop_map(|(line, headers)| {
            let mut h = line;
            for x in headers {
                h.push_str("\r\n");
                h.push_str(&x);
            }
            h.push_str("\r\n\r\n");
            h
        })
}

/// A body that claims any chunk sizes, with noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u64>().prop_map(|n| format!("{n:x}\r\n").into_bytes()),
        (0usize..40).prop_map(|n| format!("{n:x}\r\n").into_bytes()),
        Just(b"ffffffffffffffff\r\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|p| p.concat())
}

#[test]
fn answers_arriving_byte_by_byte_parse_or_fail_clearly() {
    let wire = prop_oneof![
        (head(), body()).prop_map(|(h, b)| [h.into_bytes(), b].concat()),
        proptest::collection::vec(any::<u8>(), 0..256),
    ];
    proptest!(fuzz::config(256), |(wire in wire)| {
        for end in 0..=wire.len() {
            let part = &wire[..end];
            if let Ok(Some(r)) = parse(part) {
                prop_assert!(r.body.len() <= part.len());
            }
            if let Ok(r) = parse_closed(part) {
                prop_assert!(r.body.len() <= part.len());
            }
        }
    });
}

/// Encodes `body` with a length, or in chunks of the given sizes (cycled).
fn encode(status: u16, body: &[u8], chunks: Option<&[usize]>) -> Vec<u8> {
    let mut wire = format!("HTTP/1.1 {status} Whatever\r\nServer: x\r\n").into_bytes();
    match chunks {
        None => {
            wire.extend(format!("Content-Length: {}\r\n\r\n", body.len()).bytes());
            wire.extend_from_slice(body);
        }
        Some(sizes) => {
            wire.extend(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = body;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].clamp(1, rest.len());
                i += 1;
                wire.extend(format!("{n:x};ext=1\r\n").bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend(b"0\r\n\r\n");
        }
    }
    wire
}

#[test]
fn encoded_answers_round_trip_once_complete() {
    let chunks = proptest::option::of(proptest::collection::vec(1usize..100, 1..4));
    proptest!(fuzz::config(256), |(status in 200u16..600, body in proptest::collection::vec(any::<u8>(), 0..512), chunks in chunks)| {
        let wire = encode(status, &body, chunks.as_deref());
        let expected = Response { status, body };
        // a chunked answer is complete at its last chunk's size line (trailers unread)
        let complete_at = wire.len() - if chunks.is_some() { 2 } else { 0 };
        for end in 0..complete_at {
            prop_assert!(matches!(parse(&wire[..end]), Ok(None)), "complete at {end} of {}", wire.len());
        }
        prop_assert_eq!(parse(&wire).unwrap().unwrap(), expected.clone());
        if chunks.is_none() {
            prop_assert_eq!(parse_closed(&wire).unwrap(), expected);
        }
    });
}
