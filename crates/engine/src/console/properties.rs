//! Property tests of the console line reader: any bytes become lines without `\r`, `\n` or
//! trailing blanks, one per newline (and one for an unterminated tail), never a panic.

use proptest::prelude::*;

use super::for_each_line;
use crate::fuzz;

/// Reads `data` in pieces of `chunks` bytes (cycled), as a serial socket delivers it.
struct Chunked<'a> {
    data: &'a [u8],
    chunks: Vec<usize>,
    reads: usize,
}

impl std::io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.chunks[self.reads % self.chunks.len()]
            .min(buf.len())
            .min(self.data.len());
        self.reads += 1;
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn console_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        "[a-z \t\r\n\x1b\\[0-9;m]{0,64}".prop_map(String::into_bytes),
        Just(b"\r\n".to_vec()),
        Just(vec![0u8; 3]),
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat())
}

#[test]
fn console_bytes_become_one_clean_line_per_newline() {
    proptest!(fuzz::config(256), |(data in console_bytes(), chunks in proptest::collection::vec(1usize..100, 1..5))| {
        let mut lines = Vec::new();
        for_each_line(Chunked { data: &data, chunks, reads: 0 }, |l| lines.push(l));
        let mut expected: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        if expected.last().is_some_and(|l| l.is_empty()) {
            expected.pop();
        }
        prop_assert_eq!(lines.len(), expected.len());
        for (line, raw) in lines.iter().zip(expected) {
            prop_assert!(!line.contains(['\r', '\n']));
            prop_assert_eq!(line.trim_end(), line.as_str());
            let raw: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
            let text = String::from_utf8_lossy(&raw);
            prop_assert_eq!(line.as_str(), text.trim_end());
        }
    });
}

/// Console bytes with lines longer than the cut.
fn long_console_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        console_bytes(),
        (any::<u8>(), 1..3 * super::MAX_LINE).prop_map(|(b, n)| vec![b; n]),
    ];
    proptest::collection::vec(piece, 0..4).prop_map(|p| p.concat())
}

/// [`Chunked`] owning its bytes (a reader thread needs `'static`).
struct OwnedChunked {
    data: Vec<u8>,
    at: usize,
    chunks: Vec<usize>,
    reads: usize,
}

impl std::io::Read for OwnedChunked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut c = Chunked {
            data: &self.data[self.at..],
            chunks: self.chunks.clone(),
            reads: self.reads,
        };
        let n = c.read(buf)?;
        self.at += n;
        self.reads += 1;
        Ok(n)
    }
}

#[test]
fn the_console_file_keeps_every_byte_and_reads_back_as_the_lines() {
    use std::sync::Arc;
    let dir = crate::vmm::test_dir::TestDir::new();
    let path = dir.path().join(super::FILE_NAME);
    let logger = Arc::new(crate::log::Logger::new(crate::event::Fanout::new(vec![])));
    proptest!(fuzz::config(32), |(data in long_console_bytes(), chunks in proptest::collection::vec(1usize..70_000, 1..5))| {
        let console = Arc::new(super::Console::with_file(path.clone()));
        console.reset();
        let stream = OwnedChunked { data: data.clone(), at: 0, chunks, reads: 0 };
        console.spawn_reader(stream, "m".into(), logger.clone()).join().unwrap();
        let file = std::fs::read(&path).unwrap();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let mut s = super::Splitter::default();
        s.feed(&data, &mut |p| pieces.push(p.to_vec()));
        prop_assert!(s.held() < super::MAX_LINE);
        s.finish(&mut |p| pieces.push(p.to_vec()));
        prop_assert!(pieces.iter().all(|p| p.len() <= super::MAX_LINE));
        prop_assert_eq!(pieces.concat(), data.clone());
        // every byte, and a newline ending an unfinished tail
        prop_assert!(file.starts_with(&data));
        let tail = &file[data.len()..];
        prop_assert!(tail.is_empty() || tail == b"\n");
        let lines: Vec<String> = pieces.iter().map(|p| super::clean(p)).collect();
        prop_assert_eq!(console.text(), lines.join("\n"));
        prop_assert_eq!(console.tail(1), lines.last().cloned().into_iter().collect::<Vec<_>>());
    });
}
