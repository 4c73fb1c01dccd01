use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Kind, HEADER_LEN, MAX_BODY};

/// Why a frame could not be read, written or understood.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The kind byte names no kind.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The header announces (or a writer tried) a body longer than [`MAX_BODY`].
    #[error("frame body of {len} bytes exceeds the maximum of {max} bytes", max = MAX_BODY)]
    Oversized { len: u64 },
    /// A JSON body that does not parse as the kind's message.
    #[error("bad {kind} frame body: {source}")]
    BadBody {
        kind: Kind,
        #[source]
        source: serde_json::Error,
    },
    /// The stream ended cleanly between two frames.
    #[error("the connection was closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("the connection was closed in the middle of a frame ({have} of {want} bytes)")]
    Truncated { have: usize, want: usize },
    /// Reading or writing the stream failed.
    #[error("frame i/o failed: {0}")]
    Io(#[from] io::Error),
}

/// One frame: its kind and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, body: Vec<u8>) -> Frame {
        Frame { kind, body }
    }

    /// The body parsed as the JSON message `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.body).map_err(|source| FrameError::BadBody {
            kind: self.kind,
            source,
        })
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self.kind, &self.body)
    }
}

fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).expect("frame body length checked against MAX_BODY");
    let l = len.to_le_bytes();
    [kind as u8, l[0], l[1], l[2], l[3]]
}

fn check_len(len: usize) -> Result<(), FrameError> {
    if len > MAX_BODY {
        return Err(FrameError::Oversized { len: len as u64 });
    }
    Ok(())
}

/// The bytes of a frame.
///
/// # Panics
/// If `body` is longer than [`MAX_BODY`]: callers cut data into chunks (see
/// [`crate::DATA_CHUNK`]); [`encode_json`] and [`write_frame`] return an error instead.
pub fn encode_frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    assert!(
        body.len() <= MAX_BODY,
        "frame body of {} bytes exceeds MAX_BODY",
        body.len()
    );
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header(kind, body.len()));
    out.extend_from_slice(body);
    out
}

/// The bytes of a frame whose body is `message` as JSON.
pub fn encode_json<T: Serialize + ?Sized>(kind: Kind, message: &T) -> Result<Vec<u8>, FrameError> {
    let body =
        serde_json::to_vec(message).map_err(|source| FrameError::BadBody { kind, source })?;
    check_len(body.len())?;
    Ok(encode_frame(kind, &body))
}

/// Writes one frame (header and body in one `write_all`, so that concurrent writers that
/// hold a lock around this call never interleave).
pub fn write_frame<W: Write + ?Sized>(
    w: &mut W,
    kind: Kind,
    body: &[u8],
) -> Result<(), FrameError> {
    check_len(body.len())?;
    w.write_all(&encode_frame(kind, body))?;
    Ok(())
}

/// Writes one frame whose body is `message` as JSON.
pub fn write_json<W: Write + ?Sized, T: Serialize + ?Sized>(
    w: &mut W,
    kind: Kind,
    message: &T,
) -> Result<(), FrameError> {
    w.write_all(&encode_json(kind, message)?)?;
    Ok(())
}

/// Fills `buf` from `r`; returns how many bytes were read before EOF (all of them if none).
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match r.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(have)
}

/// Reads one frame, blocking. EOF before the first header byte is [`FrameError::Closed`],
/// inside a frame [`FrameError::Truncated`]. The length is checked before the body is
/// allocated.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Frame, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let have = read_full(r, &mut head)?;
    if have == 0 {
        return Err(FrameError::Closed);
    }
    if have < HEADER_LEN {
        return Err(FrameError::Truncated {
            have,
            want: HEADER_LEN,
        });
    }
    let (kind, len) = parse_header(&head)?;
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated {
            have: HEADER_LEN + got,
            want: HEADER_LEN + len,
        });
    }
    Ok(Frame { kind, body })
}

/// The kind and body length of a header, both checked.
pub(crate) fn parse_header(head: &[u8; HEADER_LEN]) -> Result<(Kind, usize), FrameError> {
    let kind = Kind::try_from(head[0])?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len as usize > MAX_BODY {
        return Err(FrameError::Oversized {
            len: u64::from(len),
        });
    }
    Ok((kind, len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Exec, Exit};

    #[test]
    fn a_frame_is_kind_length_body() {
        assert_eq!(
            encode_frame(Kind::Stdout, b"hi"),
            vec![0x82, 2, 0, 0, 0, b'h', b'i']
        );
        assert_eq!(encode_frame(Kind::Ping, b""), vec![0x06, 0, 0, 0, 0]);
    }

    #[test]
    fn read_frame_reads_what_write_frame_wrote() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Kind::Stderr, b"\0\xff\n").unwrap();
        write_json(
            &mut wire,
            Kind::Exit,
            &Exit {
                status: 3,
                signal: None,
                timed_out: false,
            },
        )
        .unwrap();
        let mut r = &wire[..];
        let f = read_frame(&mut r).unwrap();
        assert_eq!(f, Frame::new(Kind::Stderr, b"\0\xff\n".to_vec()));
        let exit: Exit = read_frame(&mut r).unwrap().json().unwrap();
        assert_eq!(exit.status, 3);
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn eof_inside_a_frame_is_truncated() {
        let wire = encode_frame(Kind::Data, b"abcdef");
        for cut in 1..wire.len() {
            let mut r = &wire[..cut];
            assert!(
                matches!(read_frame(&mut r), Err(FrameError::Truncated { .. })),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn unknown_kind_and_oversized_length_are_refused_from_the_header() {
        let mut r: &[u8] = &[0x7f, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r),
            Err(FrameError::UnknownKind(0x7f))
        ));
        let mut r: &[u8] = &[0x11, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut r),
            Err(FrameError::Oversized { len: 0xffff_ffff })
        ));
    }

    #[test]
    fn a_body_at_max_is_accepted_and_one_more_byte_is_not() {
        let body = vec![7u8; MAX_BODY];
        let wire = encode_frame(Kind::Data, &body);
        assert_eq!(read_frame(&mut &wire[..]).unwrap().body.len(), MAX_BODY);
        let too_long = vec![7u8; MAX_BODY + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), Kind::Data, &too_long),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn a_body_that_is_not_the_message_is_bad_body() {
        let f = Frame::new(Kind::Exec, b"{\"command\": 3}".to_vec());
        let err = f.json::<Exec>().unwrap_err();
        assert!(matches!(
            err,
            FrameError::BadBody {
                kind: Kind::Exec,
                ..
            }
        ));
        assert!(err.to_string().starts_with("bad EXEC frame body"), "{err}");
    }
}
