//! Property tests of the host-side parser: arbitrary bytes never panic it, and what the
//! encoder writes comes back whole however the stream is cut.

use agent_protocol::{read_frame, Frame, FrameDecoder, FrameError, Kind, MAX_BODY};
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
