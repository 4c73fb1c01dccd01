use crate::frame::parse_header;
use crate::{Frame, FrameError, Kind, HEADER_LEN};

/// An incremental frame parser for a reader that must not block (the host's, with deadlines):
/// push the bytes as they arrive, then take frames until [`FrameDecoder::next_frame`] returns
/// `Ok(None)`.
///
/// A header is checked as soon as its five bytes are there: an unknown kind or a length over
/// [`crate::MAX_BODY`] is an error before any of the body arrives, and nothing is allocated
/// for it. After an error the decoder stays failed (the stream is out of step): every later
/// call returns the same error.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the unparsed bytes start in `buf`.
    pos: usize,
    failed: Option<Fault>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    UnknownKind(u8),
    Oversized(u64),
}

impl Fault {
    fn error(self) -> FrameError {
        match self {
            Fault::UnknownKind(b) => FrameError::UnknownKind(b),
            Fault::Oversized(len) => FrameError::Oversized { len },
        }
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends bytes read from the stream. Bytes pushed after a failure are dropped.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the error that puts
    /// the stream out of step.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(fault) = self.failed {
            return Err(fault.error());
        }
        let avail = &self.buf[self.pos..];
        let Some(head) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (kind, len) = match parse_header(head) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.fail(match e {
                    FrameError::UnknownKind(b) => Fault::UnknownKind(b),
                    FrameError::Oversized { len } => Fault::Oversized(len),
                    _ => unreachable!("parse_header fails only on the kind or the length"),
                });
                return Err(e);
            }
        };
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = avail[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.pos += HEADER_LEN + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(Frame { kind, body }))
    }

    /// How many bytes are buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// At the end of the stream: `Ok` if it ended between frames, else
    /// [`FrameError::Truncated`] (or the earlier failure).
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(fault) = self.failed {
            return Err(fault.error());
        }
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let want = match self.buf[self.pos..].first_chunk::<HEADER_LEN>() {
            Some(head) => parse_header(head).map(|(_, len)| HEADER_LEN + len)?,
            None => HEADER_LEN,
        };
        Err(FrameError::Truncated { have, want })
    }

    fn fail(&mut self, fault: Fault) {
        self.failed = Some(fault);
        self.buf = Vec::new();
        self.pos = 0;
    }

    /// The kind of the frame being received, once its header is there.
    pub fn pending_kind(&self) -> Option<Kind> {
        let head = self.buf[self.pos..].first_chunk::<HEADER_LEN>()?;
        parse_header(head).ok().map(|(kind, _)| kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_frame, MAX_BODY};

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut wire = encode_frame(Kind::Stdout, b"hello");
        wire.extend(encode_frame(Kind::Ping, b""));
        wire.extend(encode_frame(Kind::Data, &[0u8; 300]));
        let mut d = FrameDecoder::new();
        let mut frames = Vec::new();
        for byte in &wire {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::new(Kind::Stdout, b"hello".to_vec()),
                Frame::new(Kind::Ping, vec![]),
                Frame::new(Kind::Data, vec![0u8; 300]),
            ]
        );
        d.finish().unwrap();
    }

    #[test]
    fn an_oversized_header_fails_before_its_body_and_stays_failed() {
        let mut d = FrameDecoder::new();
        let len = (MAX_BODY as u32 + 1).to_le_bytes();
        d.push(&[0x11, len[0], len[1], len[2], len[3]]);
        assert!(matches!(d.next_frame(), Err(FrameError::Oversized { .. })));
        d.push(&encode_frame(Kind::Ping, b""));
        assert!(matches!(d.next_frame(), Err(FrameError::Oversized { .. })));
        assert!(matches!(d.finish(), Err(FrameError::Oversized { .. })));
    }

    #[test]
    fn an_unknown_kind_fails_at_once() {
        let mut d = FrameDecoder::new();
        d.push(&[0x00, 0, 0, 0, 0]);
        assert!(matches!(d.next_frame(), Err(FrameError::UnknownKind(0))));
    }

    #[test]
    fn a_partial_frame_at_the_end_is_truncated() {
        let mut d = FrameDecoder::new();
        d.push(&encode_frame(Kind::Stdout, b"abc")[..6]);
        assert!(d.next_frame().unwrap().is_none());
        assert_eq!(d.pending_kind(), Some(Kind::Stdout));
        assert!(matches!(
            d.finish(),
            Err(FrameError::Truncated { have: 6, want: 8 })
        ));
    }
}
