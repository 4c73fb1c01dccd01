//! Property tests of the host-side parser: arbitrary bytes never panic it, and what the
//! encoder writes comes back whole however the stream is cut.

use agent_protocol::{
    encode_json, read_frame, validate_relative_path, Entry, EntryKind, Exec, Exit, Failure, Frame,
    FrameDecoder, FrameError, Hello, Kind, MAX_BODY,
};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = Kind> {
    proptest::sample::select(Kind::ALL.to_vec())
}

fn frame() -> impl Strategy<Value = Frame> {
    (kind(), proptest::collection::vec(any::<u8>(), 0..2048)).prop_map(|(k, b)| Frame::new(k, b))
}

/// Bytes that are often frames, sometimes cut or corrupted, sometimes noise, so that the
/// parser gets past the first header as well as failing on it.
fn plausible_wire() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        frame().prop_map(|f| f.encode()),
        (frame(), any::<prop::sample::Index>()).prop_map(|(f, i)| {
            let wire = f.encode();
            wire[..i.index(wire.len())].to_vec()
        }),
        (frame(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(f, i, b)| {
            let mut wire = f.encode();
            let at = i.index(wire.len());
            wire[at] = b;
            wire
        }),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec(segment, 0..8).prop_map(|s| s.concat())
}

/// Feeds `wire` in chunks of the given sizes (cycled) and collects frames until the end or
/// the first error.
fn decode_in_chunks(
    wire: &[u8],
    chunks: &[usize],
) -> (Vec<Frame>, Option<FrameError>, FrameDecoder) {
    let mut d = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < wire.len() {
        let n = chunks[i % chunks.len()].clamp(1, wire.len() - at);
        i += 1;
        d.push(&wire[at..at + n]);
        at += n;
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e), d),
            }
        }
    }
    (frames, None, d)
}

proptest! {
    #[test]
    fn arbitrary_bytes_yield_frames_or_an_error(
        wire in prop_oneof![proptest::collection::vec(any::<u8>(), 0..4096), plausible_wire()],
        chunks in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let (frames, err, mut d) = decode_in_chunks(&wire, &chunks);
        let consumed: usize = frames.iter().map(|f| 5 + f.body.len()).sum();
        prop_assert!(consumed <= wire.len());
        for f in &frames {
            prop_assert!(f.body.len() <= MAX_BODY);
        }
        match err {
            Some(FrameError::UnknownKind(_) | FrameError::Oversized { .. }) => {
                prop_assert!(d.next_frame().is_err(), "a failed decoder stays failed");
            }
            Some(other) => prop_assert!(false, "unexpected error {other}"),
            None => {
                prop_assert_eq!(consumed + d.buffered(), wire.len());
                prop_assert_eq!(d.finish().is_ok(), d.buffered() == 0);
            }
        }
        // The blocking reader agrees with the decoder on the same bytes.
        let mut r = &wire[..];
        let mut read = Vec::new();
        while let Ok(f) = read_frame(&mut r) {
            read.push(f);
        }
        prop_assert_eq!(read, frames);
    }

    #[test]
    fn encoded_frames_decode_whole_at_any_chunk_boundaries(
        frames in proptest::collection::vec(frame(), 0..12),
        chunks in proptest::collection::vec(1usize..5000, 1..8),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let (decoded, err, d) = decode_in_chunks(&wire, &chunks);
        prop_assert!(err.is_none());
        prop_assert_eq!(decoded, frames.clone());
        prop_assert!(d.finish().is_ok());
        let mut r = &wire[..];
        for f in &frames {
            prop_assert_eq!(&read_frame(&mut r).unwrap(), f);
        }
        prop_assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn any_length_over_max_is_refused_from_the_header(
        k in kind(),
        len in (MAX_BODY as u32 + 1)..=u32::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut wire = vec![k as u8];
        wire.extend_from_slice(&len.to_le_bytes());
        wire.extend_from_slice(&tail);
        let mut d = FrameDecoder::new();
        d.push(&wire[..5]);
        let is_oversized = matches!(d.next_frame(), Err(FrameError::Oversized { len: l }) if l == u64::from(len));
        prop_assert!(is_oversized);
        let mut r = &wire[..];
        let is_oversized = matches!(read_frame(&mut r), Err(FrameError::Oversized { .. }));
        prop_assert!(is_oversized);
        prop_assert_eq!(r.len(), tail.len(), "nothing past the header was read");
    }
}

/// Path-like text: components that are names, empty, `.`, `..`, with NULs and slashes.
fn path_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        "[a-z]{1,4}",
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("...".to_string()),
        Just("a\0b".to_string()),
        any::<String>(),
    ];
    (any::<bool>(), proptest::collection::vec(part, 0..5)).prop_map(|(absolute, parts)| {
        format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        path_like(),
        proptest::sample::select(vec![EntryKind::File, EntryKind::Dir, EntryKind::Symlink]),
        any::<(u32, u32, u32, u64)>(),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(path, kind, (mode, uid, gid, size), target)| Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            target,
        })
}

/// Text that is often an ENTRY or EXIT body, sometimes with fields of the wrong type.
fn json_like() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("1e400".to_string()),
        Just("-1".to_string()),
        Just("null".to_string()),
        "\"[a-z./]{0,6}\"",
        Just("\"file\"".to_string()),
        Just("\"symlink\"".to_string()),
        Just("[]".to_string()),
    ];
    let key = proptest::sample::select(vec![
        "path", "kind", "mode", "uid", "gid", "size", "target", "status", "signal", "x",
    ]);
    prop_oneof![
        proptest::collection::vec((key, value), 0..8).prop_map(|kv| {
            let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", fields.join(",")).into_bytes()
        }),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #[test]
    fn entry_paths_are_accepted_only_as_plain_relative_components(path in path_like()) {
        match validate_relative_path(&path) {
            Ok(parts) => {
                prop_assert_eq!(parts.join("/"), path.clone());
                for p in &parts {
                    prop_assert!(!p.is_empty() && *p != "." && *p != ".." && !p.contains(['/', '\0']));
                }
                prop_assert!(!path.starts_with('/'));
            }
            Err(e) => {
                let quoted = format!("{:?}", path);
                prop_assert!(e.to_string().contains(&quoted));
            }
        }
    }

    #[test]
    fn message_bodies_decode_or_fail_as_frame_errors(body in json_like(), kind in kind()) {
        let frame = Frame::new(kind, body);
        // any body: a message that re-encodes to itself, or a BadBody error naming the kind
        fn check<T>(frame: &Frame) -> Result<(), TestCaseError>
        where
            T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
        {
            match frame.json::<T>() {
                Ok(m) => {
                    let again = Frame::new(frame.kind, serde_json::to_vec(&m).unwrap());
                    prop_assert_eq!(again.json::<T>().unwrap(), m);
                }
                Err(e) => {
                    let named = matches!(&e, FrameError::BadBody { kind, .. } if *kind == frame.kind);
                    prop_assert!(named, "{e:?}");
                }
            }
            Ok(())
        }
        check::<Entry>(&frame)?;
        check::<Exit>(&frame)?;
        check::<Hello>(&frame)?;
        check::<Exec>(&frame)?;
        check::<Failure>(&frame)?;
    }

    #[test]
    fn encoded_entries_round_trip(e in entry()) {
        let wire = encode_json(Kind::Entry, &e).unwrap();
        let frame = read_frame(&mut &wire[..]).unwrap();
        prop_assert_eq!(frame.json::<Entry>().unwrap(), e);
    }
}
