//! The console's file: every byte the console stream brought since the last start, raw, in
//! the machine's state directory (private: only the driver's user can enter it). Memory
//! keeps only a window; the whole log is read back from here when asked.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::lines::{clean, Splitter, MAX_LINE};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "console.log";

/// The open console file.
pub struct LogFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// The same open file, for reading back (positioned reads: even after the state directory
    /// was deleted, the log stays readable until the next start).
    reader: File,
    /// The last piece written ended without a `\n` and is shorter than a cut: a stream's
    /// unfinished tail, which a line written next must not join.
    open_tail: bool,
}

impl LogFile {
    /// Creates (or empties) the file at `path`, mode 0600, not following a symlink.
    pub fn create(path: &Path) -> std::io::Result<LogFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            reader: file.try_clone()?,
            writer: BufWriter::with_capacity(64 * 1024, file),
            open_tail: false,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file's metadata.
    #[cfg(test)]
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.reader.metadata()
    }

    /// Appends a raw piece of a stream (see [`Splitter`]). A short piece without `\n` is
    /// only ever a stream's last, so a piece after it starts a line of its own.
    pub fn write_piece(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.end_tail()?;
        self.writer.write_all(raw)?;
        self.open_tail = !raw.ends_with(b"\n") && raw.len() < MAX_LINE;
        Ok(())
    }

    /// Appends a whole line that did not come from the raw stream.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        self.end_tail()?;
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")
    }

    /// Ends an unfinished tail with a `\n` (the stream ended), so the next stream's first line
    /// stays a line of its own.
    pub fn end_tail(&mut self) -> std::io::Result<()> {
        if self.open_tail {
            self.writer.write_all(b"\n")?;
            self.open_tail = false;
        }
        Ok(())
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }

    /// Reads the whole file back as the console's lines (cut and cleaned as the reader cut
    /// them), calling `f` with each.
    pub fn read_lines(&mut self, f: &mut impl FnMut(String)) -> std::io::Result<()> {
        self.flush()?;
        let mut splitter = Splitter::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut offset = 0u64;
        let mut each = |raw: &[u8]| f(clean(raw));
        loop {
            let n = self.reader.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            splitter.feed(&buf[..n], &mut each);
        }
        splitter.finish(&mut each);
        Ok(())
    }
}
