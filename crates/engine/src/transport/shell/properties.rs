//! Property tests of the backdoor's reply readers ([`Framing::Raw`], also a container's
//! segments; [`Framing::Base64`]; [`Framing::Upstream`]): whatever the guest sends, a command
//! returns its output and status or a clear error, never a panic, and what an honest guest
//! encodes comes back exactly however the stream cuts it.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use proptest::prelude::*;

use super::{Framing, Reply, Shell, ShellError, CONTAINER_PREAMBLE, VM_PREAMBLE};
use crate::fuzz;
use crate::interrupt::Deadline;
use crate::transport::stream::{ByteStream, Stream};

/// A piece of what the fake guest answers: bytes, or the marker of the command's reply
/// ([`Framing::Raw`]'s nonce, which only the command line sent knows).
#[derive(Debug, Clone)]
enum Piece {
    Bytes(Vec<u8>),
    Marker,
}

#[derive(Default)]
struct State {
    written: Vec<u8>,
    script: Vec<Piece>,
    reply: Option<Vec<u8>>,
    at: usize,
    chunks: Vec<usize>,
    reads: usize,
}

/// A guest that answers `script` (its marker filled in from the command line received) in
/// reads of `chunks` bytes (cycled), then closes.
#[derive(Clone)]
struct Scripted(Arc<Mutex<State>>);

impl Scripted {
    fn new(script: Vec<Piece>, chunks: Vec<usize>) -> Self {
        Scripted(Arc::new(Mutex::new(State {
            script,
            chunks,
            ..State::default()
        })))
    }

    /// What the guest sent in all (valid once the first read happened).
    fn reply(&self) -> Vec<u8> {
        self.0.lock().unwrap().reply.clone().unwrap_or_default()
    }
}

/// The nonce in a raw command line: the 16 hex digits of its `printf '<nonce>E`.
fn nonce_of(line: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    text.match_indices("printf '")
        .map(|(i, m)| &text[i + m.len()..])
        .find(|rest| {
            rest.len() > 16
                && rest.as_bytes()[16] == b'E'
                && rest[..16].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|rest| rest.as_bytes()[..16].to_vec())
        .unwrap_or_default()
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.lock().unwrap();
        if s.reply.is_none() {
            let nonce = nonce_of(&s.written);
            let reply = s
                .script
                .iter()
                .flat_map(|p| match p {
                    Piece::Bytes(b) => b.clone(),
                    Piece::Marker => nonce.clone(),
                })
                .collect();
            s.reply = Some(reply);
        }
        let len = s.reply.as_ref().map_or(0, Vec::len);
        let chunk = s.chunks[s.reads % s.chunks.len()].max(1);
        s.reads += 1;
        let n = chunk.min(buf.len()).min(len - s.at);
        let at = s.at;
        buf[..n].copy_from_slice(&s.reply.as_ref().unwrap()[at..at + n]);
        s.at += n;
        Ok(n)
    }
}

impl Write for Scripted {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().written.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ByteStream for Scripted {
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn shutdown(&self) -> io::Result<()> {
        Ok(())
    }
    fn try_clone_stream(&self) -> io::Result<Stream> {
        Ok(Box::new(self.clone()))
    }
    fn try_send(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write(data)
    }
}

fn run(
    framing: Framing,
    reply: Reply,
    script: Vec<Piece>,
    chunks: Vec<usize>,
) -> (Scripted, Result<(i32, Vec<u8>), ShellError>) {
    run_with(framing, reply, script, chunks, VM_PREAMBLE)
}

/// [`run`], with a container's preamble or a VM's.
fn run_with(
    framing: Framing,
    reply: Reply,
    script: Vec<Piece>,
    chunks: Vec<usize>,
    preamble: &'static str,
) -> (Scripted, Result<(i32, Vec<u8>), ShellError>) {
    let guest = Scripted::new(script, chunks);
    let mut shell =
        Shell::with_framing(Box::new(guest.clone()) as Stream, framing).with_preamble(preamble);
    let deadline = Deadline::after(Some(Duration::from_secs(60)));
    let result = shell.execute("true", None, reply, deadline);
    (guest, result)
}

/// A clear error: the guest broke the protocol, or closed before the reply was whole.
fn is_clean_failure(e: &ShellError) -> bool {
    matches!(e, ShellError::Protocol(_) | ShellError::Disconnected)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..300, 1..6)
}

/// Noise that is often close to a reply: digits, spaces, newlines, `E`, base64 text.
fn noise() -> impl Strategy<Value = Piece> {
    prop_oneof![
        bytes(64).prop_map(Piece::Bytes),
        "[0-9 E\\-+\n]{0,24}".prop_map(|s| Piece::Bytes(s.into_bytes())),
        "[A-Za-z0-9+/=]{0,40}[ \n]?".prop_map(|s| Piece::Bytes(s.into_bytes())),
        Just(Piece::Marker),
    ]
}

fn status_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i32>().prop_map(|s| s.to_string()),
        "[0-9 \\-+a-z]{0,30}",
        Just(String::new()),
    ]
}

#[test]
fn raw_replies_round_trip() {
    proptest!(fuzz::config(128), |(output in bytes(4096), status in any::<i32>(), chunks in chunks(), trailer in bytes(32), container in any::<bool>())| {
        let script = vec![
            Piece::Bytes(output.clone()),
            Piece::Marker,
            Piece::Bytes(format!("E{status}\n").into_bytes()),
            Piece::Bytes(trailer),
        ];
        // a container's shell reads its segments with the same framing, its own preamble
        let preamble = if container { CONTAINER_PREAMBLE } else { VM_PREAMBLE };
        let (_, result) = run_with(Framing::Raw, Reply::Full, script, chunks, preamble);
        prop_assert_eq!(result.unwrap(), (status, output));
    });
}

#[test]
fn raw_replies_of_arbitrary_bytes_parse_or_fail_clearly() {
    let script = proptest::collection::vec(noise(), 0..10);
    proptest!(fuzz::config(256), |(script in script, chunks in chunks(), output_only in any::<bool>())| {
        let reply = if output_only { Reply::OutputOnly } else { Reply::Full };
        let (guest, result) = run(Framing::Raw, reply, script, chunks);
        match result {
            Ok((status, output)) => {
                // the output is what came before the first `<nonce>E`
                let wire = guest.reply();
                prop_assert!(wire.starts_with(&output));
                let nonce = nonce_of(&guest.0.lock().unwrap().written);
                prop_assert!(wire[output.len()..].starts_with(&nonce));
                // the status is the text from there to the newline (none: -1)
                let rest = &wire[output.len() + nonce.len() + 1..];
                let text = String::from_utf8_lossy(&rest[..rest.iter().position(|&b| b == b'\n').unwrap()]).trim().to_string();
                let expected = if text.is_empty() { -1 } else { text.parse().unwrap() };
                prop_assert_eq!(status, expected);
            }
            Err(e) => prop_assert!(is_clean_failure(&e), "{e:?}"),
        }
    });
}

#[test]
fn base64_replies_round_trip() {
    proptest!(fuzz::config(128), |(output in bytes(4096), status in any::<i32>(), chunks in chunks(), upstream in any::<bool>())| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&output);
        let (framing, text) = if upstream {
            (Framing::Upstream, format!("{encoded}\n{status}\n"))
        } else {
            (Framing::Base64, format!("{encoded} {status}\n"))
        };
        let (_, result) = run(framing, Reply::Full, vec![Piece::Bytes(text.into_bytes())], chunks);
        prop_assert_eq!(result.unwrap(), (status, output));
    });
}

#[test]
fn base64_replies_of_arbitrary_bytes_parse_or_fail_clearly() {
    let line = prop_oneof![
        bytes(256),
        ("[A-Za-z0-9+/=]{0,64}", status_text())
            .prop_map(|(b, s)| format!("{b} {s}\n").into_bytes()),
        status_text().prop_map(|s| format!("{s}\n").into_bytes()),
    ];
    let framing = prop_oneof![Just(Framing::Base64), Just(Framing::Upstream)];
    let reply = prop_oneof![Just(Reply::Full), Just(Reply::OutputOnly)];
    proptest!(fuzz::config(256), |(lines in proptest::collection::vec(line, 0..4), chunks in chunks(), framing in framing, reply in reply)| {
        let script = lines.into_iter().map(Piece::Bytes).collect();
        let (_, result) = run(framing, reply, script, chunks);
        if let Err(e) = result {
            prop_assert!(is_clean_failure(&e), "{e:?}");
        }
    });
}
