//! A machine's console: the lines its serial port (QEMU's stdout) or journal printed.
//! A reader thread appends lines; waits are woken by new lines, never by polling.
//!
//! The guest controls this stream, so memory stays bounded whatever it sends: every byte
//! goes to a file in the machine's state directory ([`file`]), lines are cut at
//! [`MAX_LINE`] bytes ([`lines`]), and memory keeps only a window of the last lines (for error
//! messages) and a bounded queue of the lines no wait consumed yet.

mod file;
mod lines;

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::log::Logger;

use file::LogFile;
pub use file::FILE_NAME;
pub use lines::{clean, for_each_line, for_each_piece, printable, Splitter, MAX_LINE};

/// The memory the window of last lines ([`Console::tail`]) may take, in bytes.
pub const WINDOW_BYTES: usize = 1024 * 1024;
/// The memory the queue of lines no wait consumed yet may take, in bytes; beyond it the
/// oldest lines are dropped from the queue (they stay in the file and `text()`). Upstream's
/// queue is unbounded; a test that waits for console text keeps it short.
pub const UNREAD_BYTES: usize = 16 * 1024 * 1024;
/// The most text one `wait_for_text` accumulates, in bytes; beyond it the oldest half is
/// dropped, so a match spanning more than half of this is not found.
pub const WAIT_TEXT_BYTES: usize = 16 * 1024 * 1024;
/// What a queued line costs besides its text (the `String` and the queue's slot).
const LINE_COST: usize = 32;

/// Lines in memory, dropped from the front beyond a budget in bytes (each line counting its
/// text and `line_cost`).
struct Bounded {
    lines: VecDeque<String>,
    bytes: usize,
    budget: usize,
    line_cost: usize,
    dropped: u64,
}

impl Bounded {
    fn new(budget: usize, line_cost: usize) -> Self {
        Bounded {
            lines: VecDeque::new(),
            bytes: 0,
            budget,
            line_cost,
            dropped: 0,
        }
    }

    fn push(&mut self, line: String) {
        self.bytes += line.len() + self.line_cost;
        self.lines.push_back(line);
        while self.bytes > self.budget && self.lines.len() > 1 {
            self.pop();
            self.dropped += 1;
        }
    }

    fn pop(&mut self) -> Option<String> {
        let line = self.lines.pop_front()?;
        self.bytes -= line.len() + self.line_cost;
        Some(line)
    }
}

struct State {
    /// The last lines, for error messages.
    window: Bounded,
    /// Lines not yet consumed by `wait_for_text` (upstream's `last_lines` queue).
    unread: Bounded,
    /// The reader reached end of file (the process exited).
    closed: bool,
    /// The console file since the last start (none when it could not be created).
    file: Option<LogFile>,
    /// Why the file is missing or incomplete.
    file_error: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            window: Bounded::new(WINDOW_BYTES, LINE_COST),
            unread: Bounded::new(UNREAD_BYTES, LINE_COST),
            closed: false,
            file: None,
            file_error: None,
        }
    }
}

impl State {
    fn push(&mut self, line: String) {
        self.unread.push(line.clone());
        self.window.push(line);
    }

    fn file_failed(&mut self, what: &str, e: std::io::Error) {
        if let Some(f) = self.file.take() {
            self.file_error = Some(format!("{what} {}: {e}", f.path().display()));
        }
    }
}

/// The console of one machine.
#[derive(Default)]
pub struct Console {
    /// Where the whole log goes; without one (unit tests) only the window is kept.
    path: Option<PathBuf>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Console {
    /// A console whose whole log goes to `path` (created, emptied, on every [`reset`]).
    ///
    /// [`reset`]: Console::reset
    pub fn with_file(path: PathBuf) -> Self {
        Console {
            path: Some(path),
            ..Console::default()
        }
    }

    /// Forgets everything (upstream resets the log on every `start()`) and empties the file.
    pub fn reset(&self) {
        let mut s = self.state.lock().unwrap();
        *s = State::default();
        if let Some(path) = &self.path {
            match LogFile::create(path) {
                Ok(f) => s.file = Some(f),
                Err(e) => s.file_error = Some(format!("creating {}: {e}", path.display())),
            }
        }
    }

    /// Appends one line that did not come from the raw stream.
    pub fn push(&self, line: String) {
        let mut s = self.state.lock().unwrap();
        if let Some(f) = &mut s.file {
            if let Err(e) = f.write_line(&line).and_then(|()| f.flush()) {
                s.file_failed("writing", e);
            }
        }
        s.push(line);
        drop(s);
        self.changed.notify_all();
    }

    /// Appends one raw piece of the stream (see [`Splitter`]) and its cleaned `line`
    /// ([`clean`]): the file keeps the bytes, memory the line.
    pub fn push_raw(&self, raw: &[u8], line: String) {
        let mut s = self.state.lock().unwrap();
        if let Some(f) = &mut s.file {
            if let Err(e) = f.write_piece(raw) {
                s.file_failed("writing", e);
            }
        }
        s.push(line);
        drop(s);
        self.changed.notify_all();
    }

    /// Writes what the file buffers (the reader calls it when the stream is idle).
    pub fn flush(&self) {
        let mut s = self.state.lock().unwrap();
        if let Some(Err(e)) = s.file.as_mut().map(LogFile::flush) {
            s.file_failed("writing", e);
        }
    }

    /// Takes a new stream after the old one ended without a new start (a warm standby took
    /// over the machine): the log is kept, waits see the console open again.
    pub fn reopen(&self) {
        self.state.lock().unwrap().closed = false;
    }

    /// Marks the end of the stream.
    pub fn close(&self) {
        let mut s = self.state.lock().unwrap();
        s.closed = true;
        if let Some(Err(e)) = s
            .file
            .as_mut()
            .map(|f| f.end_tail().and_then(|()| f.flush()))
        {
            s.file_failed("writing", e);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// The whole log since the last start, lines joined by `\n`, read back from the file: it
    /// costs memory about the size of the log while the caller holds it. When the file could
    /// not be written, the last line says so (and the lines in memory follow).
    pub fn text(&self) -> String {
        let mut s = self.state.lock().unwrap();
        let mut lines = Vec::new();
        if let Some(f) = &mut s.file {
            let mut out = String::new();
            let read = f.read_lines(&mut |line| {
                out.push_str(&line);
                out.push('\n');
            });
            match read {
                Ok(()) => {
                    out.pop();
                    return out;
                }
                Err(e) => s.file_failed("reading", e),
            }
        }
        lines.extend(s.window.lines.iter().cloned());
        if let Some(e) = &s.file_error {
            lines.push(format!(
                "[nixos-test-ng: the console log is incomplete, only its last lines are kept: {e}]"
            ));
        }
        lines.join("\n")
    }

    /// The end of the log since the last start: its last lines of at most `max_bytes` in
    /// all, and how many lines went before them. Memory stays about `max_bytes` whatever the
    /// log's size (for reports that embed the log).
    pub fn text_tail(&self, max_bytes: usize) -> (String, u64) {
        // a line costs its text and the newline that joins it
        let mut kept = Bounded::new(max_bytes, 1);
        let mut keep = |line: String| kept.push(line);
        let mut s = self.state.lock().unwrap();
        let read = s.file.as_mut().map(|f| f.read_lines(&mut keep));
        match read {
            Some(Ok(())) => {}
            Some(Err(e)) => keep(format!(
                "[nixos-test-ng: the console log file could not be read: {e}]"
            )),
            None => s.window.lines.iter().cloned().for_each(&mut keep),
        }
        drop(s);
        let text = Vec::from(kept.lines).join("\n");
        (text, kept.dropped)
    }

    /// The last `n` lines (at most those of the window, [`WINDOW_BYTES`]).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let s = self.state.lock().unwrap();
        let w = &s.window.lines;
        w.iter().skip(w.len().saturating_sub(n)).cloned().collect()
    }

    /// Takes the oldest line not yet consumed by a wait (upstream's `last_lines.get()`),
    /// waiting for one until `deadline`; `None` when none came.
    pub fn next_unread(&self, deadline: Deadline) -> Result<Option<String>> {
        let mut s = self.state.lock().unwrap();
        loop {
            if let Some(line) = s.unread.pop() {
                return Ok(Some(line));
            }
            if s.closed || deadline.expired() {
                return Ok(None);
            }
            interrupt::check()?;
            s = self.changed.wait_timeout(s, deadline.slice()).unwrap().0;
        }
    }

    /// How many lines no wait has consumed yet (upstream's `last_lines.qsize()`).
    pub fn unread_count(&self) -> usize {
        self.state.lock().unwrap().unread.lines.len()
    }

    /// How many unread lines were dropped from the queue because it was full.
    pub fn unread_dropped(&self) -> u64 {
        self.state.lock().unwrap().unread.dropped
    }

    /// True once the stream ended (the reader thread is done).
    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap().closed
    }

    /// Waits until the stream ends or `deadline` passes; true when it ended.
    pub fn wait_closed(&self, deadline: Deadline) -> Result<bool> {
        let mut s = self.state.lock().unwrap();
        loop {
            if s.closed {
                return Ok(true);
            }
            if deadline.expired() {
                return Ok(false);
            }
            interrupt::check()?;
            s = self.changed.wait_timeout(s, deadline.slice()).unwrap().0;
        }
    }

    /// Waits until `matches` accepts the accumulated text. Like upstream, each step moves one
    /// unread line into a buffer (lines are concatenated as upstream does, without separator)
    /// and tests the whole buffer; unlike upstream it waits for new lines instead of sleeping,
    /// and the buffer keeps at most [`WAIT_TEXT_BYTES`].
    pub fn wait_for_text(
        &self,
        deadline: Deadline,
        matches: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<WaitOutcome> {
        let mut acc = String::new();
        if matches(&acc)? {
            return Ok(WaitOutcome::Matched);
        }
        let mut s = self.state.lock().unwrap();
        loop {
            while let Some(line) = s.unread.pop() {
                acc.push_str(&line);
                keep_last_half_beyond(&mut acc, WAIT_TEXT_BYTES);
                drop(s);
                if matches(&acc)? {
                    return Ok(WaitOutcome::Matched);
                }
                s = self.state.lock().unwrap();
            }
            if s.closed {
                return Ok(WaitOutcome::Closed);
            }
            if deadline.expired() {
                return Ok(WaitOutcome::TimedOut);
            }
            interrupt::check()?;
            s = self.changed.wait_timeout(s, deadline.slice()).unwrap().0;
        }
    }

    /// Starts a thread reading `stream` line by line into the console and the log.
    pub fn spawn_reader(
        self: &Arc<Self>,
        stream: impl Read + Send + 'static,
        machine: String,
        logger: Arc<Logger>,
    ) -> std::thread::JoinHandle<()> {
        self.spawn_reader_with(stream, machine, logger, |_| {})
    }

    /// [`Console::spawn_reader`], also showing every line to `on_line`.
    pub fn spawn_reader_with(
        self: &Arc<Self>,
        stream: impl Read + Send + 'static,
        machine: String,
        logger: Arc<Logger>,
        on_line: impl Fn(&str) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let console = self.clone();
        let idle = self.clone();
        std::thread::Builder::new()
            .name(format!("ntng-console-{machine}"))
            .spawn(move || {
                for_each_piece(
                    stream,
                    |raw| {
                        let line = clean(raw);
                        on_line(&line);
                        logger.serial(&machine, &line);
                        console.push_raw(raw, line);
                    },
                    || idle.flush(),
                );
                console.close();
            })
            .expect("cannot start a console reader thread")
    }
}

/// When `text` is longer than `max` bytes, drops its oldest part, keeping about `max / 2`.
fn keep_last_half_beyond(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = text.len() - max / 2;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text.drain(..cut);
}

/// How [`Console::wait_for_text`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The text matched.
    Matched,
    /// The deadline passed.
    TimedOut,
    /// The console closed (the machine stopped) with no match.
    Closed,
}

/// Converts a wait outcome into an error naming the machine.
pub fn require_match(
    outcome: WaitOutcome,
    machine: &str,
    what: &str,
    secs: f64,
    timeout: Option<std::time::Duration>,
    console: &Console,
) -> Result<()> {
    match outcome {
        WaitOutcome::Matched => Ok(()),
        WaitOutcome::TimedOut => Err(Error::WaitTimedOut {
            machine: machine.to_string(),
            what: what.to_string(),
            elapsed: secs,
            timeout: timeout.unwrap_or_default(),
        }),
        WaitOutcome::Closed => Err(Error::Guest {
            machine: machine.to_string(),
            message: format!("{what}: the console closed (the machine stopped) before a match"),
            console_tail: console.tail(20),
        }),
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::test_dir::TestDir;
    use std::time::Duration;

    #[test]
    fn waits_for_a_later_line_and_keeps_the_rest_unread() {
        let c = Arc::new(Console::default());
        c.push("boot".into());
        let c2 = c.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.push("login: ".into());
            c2.push("after".into());
        });
        let d = Deadline::after(Some(Duration::from_secs(5)));
        let r = c
            .wait_for_text(d, &mut |t| Ok(t.contains("login:")))
            .unwrap();
        assert_eq!(r, WaitOutcome::Matched);
        // "after" stays unread for the next wait, as in upstream's queue
        let r = c.wait_for_text(d, &mut |t| Ok(t == "after")).unwrap();
        assert_eq!(r, WaitOutcome::Matched);
        assert_eq!(c.text(), "boot\nlogin: \nafter");
    }

    #[test]
    fn unread_lines_are_taken_one_by_one_and_close_ends_the_wait() {
        let c = Console::default();
        c.push("one".into());
        c.push("two".into());
        assert_eq!(c.unread_count(), 2);
        let now = Deadline::after(Some(Duration::ZERO));
        assert_eq!(c.next_unread(now).unwrap().as_deref(), Some("one"));
        assert_eq!(c.unread_count(), 1);
        assert!(!c.wait_closed(now).unwrap());
        c.close();
        assert_eq!(
            c.next_unread(Deadline::NEVER).unwrap().as_deref(),
            Some("two")
        );
        assert_eq!(c.next_unread(Deadline::NEVER).unwrap(), None);
        assert!(c.is_closed() && c.wait_closed(Deadline::NEVER).unwrap());
        assert_eq!(c.text(), "one\ntwo");
    }

    #[test]
    fn timeout_and_close() {
        let c = Console::default();
        let d = Deadline::after(Some(Duration::from_millis(50)));
        assert_eq!(
            c.wait_for_text(d, &mut |_| Ok(false)).unwrap(),
            WaitOutcome::TimedOut
        );
        c.close();
        assert_eq!(
            c.wait_for_text(Deadline::NEVER, &mut |_| Ok(false))
                .unwrap(),
            WaitOutcome::Closed
        );
    }

    fn filed() -> (TestDir, Console) {
        let dir = TestDir::new();
        let c = Console::with_file(dir.path().join(FILE_NAME));
        c.reset();
        (dir, c)
    }

    fn pieces(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = Splitter::default();
        s.feed(data, &mut |p| out.push(p.to_vec()));
        s.finish(&mut |p| out.push(p.to_vec()));
        out
    }

    #[test]
    fn a_long_line_is_cut_at_the_bound_and_never_held_whole() {
        let mut data = vec![b'x'; 3 * MAX_LINE + 5];
        data.extend_from_slice(b"\nend");
        let got = pieces(&data);
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_LINE, MAX_LINE, MAX_LINE, 6, 3]);
        assert_eq!(got.concat(), data);
        // fed one byte at a time, the cut falls in the same places
        let mut s = Splitter::default();
        let mut again = Vec::new();
        for b in &data {
            s.feed(std::slice::from_ref(b), &mut |p| again.push(p.to_vec()));
            assert!(s.held() < MAX_LINE);
        }
        s.finish(&mut |p| again.push(p.to_vec()));
        assert_eq!(again, got);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_the_log_escapes_control_characters() {
        let line = clean(b"a\xff\xfe\x00b\x1b[31mred\x1b[0m \r\n");
        assert_eq!(line, "a\u{fffd}\u{fffd}\0b\x1b[31mred\x1b[0m");
        assert_eq!(
            printable(&line),
            "a\u{fffd}\u{fffd}\\x00b\\x1b[31mred\\x1b[0m"
        );
        assert!(matches!(
            printable("plain\ttext"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn the_window_and_the_unread_queue_stay_within_their_budgets() {
        let c = Console::default();
        let line = "y".repeat(1000);
        let n = 2 * UNREAD_BYTES / 1000;
        for i in 0..n {
            c.push(format!("{i} {line}"));
        }
        let s = c.state.lock().unwrap();
        assert!(s.unread.bytes <= UNREAD_BYTES && s.window.bytes <= WINDOW_BYTES);
        let kept = s.unread.lines.len();
        assert!(kept > 0 && kept < n);
        assert_eq!(s.unread.dropped as usize, n - kept);
        // the newest are kept, oldest first
        assert!(s.unread.lines[0].starts_with(&format!("{} ", n - kept)));
        drop(s);
        assert_eq!(c.tail(2)[1], format!("{} {line}", n - 1));
        assert_eq!(c.unread_dropped() as usize, n - c.unread_count());
        // a single line larger than a budget is still kept
        let b = Bounded::new(10, LINE_COST);
        let mut b = b;
        b.push("a long line".repeat(3));
        assert_eq!(b.lines.len(), 1);
    }

    #[test]
    fn the_wait_buffer_keeps_its_newest_text() {
        let mut t = "é".repeat(10);
        keep_last_half_beyond(&mut t, 7);
        assert!(t.len() <= 4 && t.chars().all(|c| c == 'é'));
        let mut short = "abc".to_string();
        keep_last_half_beyond(&mut short, 7);
        assert_eq!(short, "abc");
    }

    #[test]
    fn the_file_keeps_every_byte_and_text_reads_it_back() {
        let (dir, c) = filed();
        let c = Arc::new(c);
        let mut data = Vec::new();
        data.extend_from_slice(b"boot\r\n\x1b[1mbold\x1b[0m\n\x00\x00nul\n\xff\xc3bad\n");
        data.extend(std::iter::repeat_n(b'z', 2 * MAX_LINE + 7));
        data.extend_from_slice(b"\nlast line without newline");
        let logger = Arc::new(Logger::new(crate::event::Fanout::new(vec![])));
        c.spawn_reader(std::io::Cursor::new(data.clone()), "m".into(), logger)
            .join()
            .unwrap();
        // one more stream (a standby's) and a line from elsewhere do not join the tail
        c.push("pushed".into());
        let raw = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert!(raw.starts_with(&data));
        assert_eq!(&raw[data.len()..], b"\npushed\n");
        let mut expected: Vec<String> = pieces(&data).iter().map(|p| clean(p)).collect();
        expected.push("pushed".into());
        assert_eq!(c.text(), expected.join("\n"));
        assert_eq!(c.text().lines().nth(3), Some("\u{fffd}\u{fffd}bad"));
        // deleting the state directory does not lose the log until the next start
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert_eq!(c.text(), expected.join("\n"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&raw_meta(&c).permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_tail_of_the_text_is_bounded_and_ends_the_log() {
        let (_dir, c) = filed();
        for i in 0..1000 {
            c.push(format!("line {i:04}"));
        }
        // "line 0999" is 9 bytes and a newline: 25 lines fit in 250 bytes
        let (tail, omitted) = c.text_tail(250);
        assert_eq!(omitted, 975);
        assert!(
            tail.starts_with("line 0975\n") && tail.ends_with("line 0999"),
            "{tail}"
        );
        assert_eq!(c.text_tail(1 << 20), (c.text(), 0));
        let memory_only = Console::default();
        memory_only.push("only".into());
        assert_eq!(memory_only.text_tail(100), ("only".to_string(), 0));
    }

    fn raw_meta(c: &Console) -> std::fs::Metadata {
        let s = c.state.lock().unwrap();
        s.file.as_ref().unwrap().metadata().unwrap()
    }

    #[test]
    fn reset_empties_the_file_and_a_failed_file_says_so() {
        let (dir, c) = filed();
        c.push("old".into());
        c.reset();
        c.push("new".into());
        assert_eq!(c.text(), "new");
        let c = Console::with_file(dir.path().join("missing").join(FILE_NAME));
        c.reset();
        c.push("kept".into());
        let text = c.text();
        assert!(text.starts_with("kept\n"), "{text}");
        assert!(text.contains("console log is incomplete") && text.contains("missing"));
    }

    #[test]
    fn reopen_keeps_the_log_and_waits_again() {
        let c = Console::default();
        c.push("before".into());
        c.close();
        c.reopen();
        let d = Deadline::after(Some(Duration::from_millis(50)));
        assert_eq!(
            c.wait_for_text(d, &mut |t| Ok(t.contains("never")))
                .unwrap(),
            WaitOutcome::TimedOut
        );
        c.push("after".into());
        assert_eq!(c.text(), "before\nafter");
    }
}
