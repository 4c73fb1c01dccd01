//! Cutting a guest's console bytes into lines with bounded memory.
//!
//! The guest controls these bytes: a line may be gigabytes long without a newline, hold NUL
//! bytes, invalid UTF-8 or terminal escapes. A line is therefore cut into pieces of at most
//! [`MAX_LINE`] bytes (never buffered whole); the cut depends only on the bytes, not on how
//! reads delivered them, so reading the console file back cuts it the same way.

use std::borrow::Cow;
use std::io::Read;

/// The longest console line kept as one line, in bytes (its `\n` included); a longer line
/// becomes several lines of this size. The one place this bound is named.
pub const MAX_LINE: usize = 64 * 1024;

/// Splits bytes into pieces ending at a `\n` or at [`MAX_LINE`] bytes, holding at most one
/// unfinished piece.
#[derive(Default)]
pub struct Splitter {
    partial: Vec<u8>,
}

impl Splitter {
    /// Feeds `bytes`; calls `f` with each finished piece (its `\n` included when it has one).
    pub fn feed(&mut self, mut bytes: &[u8], f: &mut impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &bytes[..bytes.len().min(room)];
            let (take, done) = match window.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (window.len(), window.len() == room),
            };
            if done && self.partial.is_empty() {
                f(&bytes[..take]);
            } else {
                self.partial.extend_from_slice(&bytes[..take]);
                if done {
                    f(&self.partial);
                    self.partial.clear();
                }
            }
            bytes = &bytes[take..];
        }
    }

    /// How many bytes of an unfinished piece it holds (always under [`MAX_LINE`]).
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Ends the stream: calls `f` with the unfinished piece, if any.
    pub fn finish(&mut self, f: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            f(&self.partial);
            self.partial.clear();
        }
    }
}

/// A piece as the console shows it: without `\r`, `\n` and trailing blanks, invalid UTF-8
/// replaced by U+FFFD (NUL bytes and escapes are kept, as upstream's decoding keeps them).
pub fn clean(raw: &[u8]) -> String {
    let raw: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
    String::from_utf8_lossy(&raw).trim_end().to_string()
}

/// A console line as the run's log shows it: control characters (ANSI escapes, NUL, bells)
/// escaped as `\xNN`, so the log stays readable and valid XML; a tab stays a tab.
pub fn printable(line: &str) -> Cow<'_, str> {
    if !line.chars().any(needs_escape) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// Reads `stream` to its end, calling `f` with each raw piece (see [`Splitter`]) and
/// `idle()` whenever no more bytes are at hand (the next read may block).
pub fn for_each_piece(mut stream: impl Read, mut f: impl FnMut(&[u8]), mut idle: impl FnMut()) {
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => splitter.feed(&buf[..n], &mut f),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        idle();
    }
    splitter.finish(&mut f);
}

/// Calls `f` with each cleaned line of `stream` (see [`clean`]) until it ends.
pub fn for_each_line(stream: impl Read, mut f: impl FnMut(String)) {
    for_each_piece(stream, |raw| f(clean(raw)), || {});
}
