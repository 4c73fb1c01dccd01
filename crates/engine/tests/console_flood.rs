//! A guest flooding its console (long lines without a newline, NULs, invalid UTF-8, ANSI
//! escapes) through the real reader thread: the driver's peak memory stays bounded, the
//! console file keeps every byte, and the log it shows has no raw control characters.
//! Its own test binary, so the process's peak RSS is this test's alone.
//!
//! `NTNG_FLOOD_MB` sets the flood's size (default 256 MiB; 1024 for the 1 GB figure).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ntng_engine::console::{Console, FILE_NAME, MAX_LINE, UNREAD_BYTES, WINDOW_BYTES};
use ntng_engine::event::{Event, Fanout, Reporter};
use ntng_engine::log::Logger;

const MIB: usize = 1024 * 1024;

/// What the flood may add to the process's peak RSS: the console's two in-memory budgets,
/// its buffers, and slack for the allocator, far below the flood's size.
const PEAK_GROWTH_BOUND: usize = UNREAD_BYTES + WINDOW_BYTES + 48 * MIB;

/// One block of the flood: a 10 MiB line without a newline, NULs, invalid UTF-8, ANSI.
fn block(n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 * MIB);
    b.extend(std::iter::repeat_n(b'A' + (n % 26) as u8, 10 * MIB));
    b.extend_from_slice(b"\x00\x00\x00\xff\xfe\xc3(\r\n");
    while b.len() < 16 * MIB {
        b.extend_from_slice(b"\x1b[1;31mred\x1b[0m \x07bell \x00nul \xe2\x82 cut utf8 \x9b\r\n");
        b.extend_from_slice(b"[   12.345678] systemd[1]: a normal boot line\n");
    }
    b
}

/// The peak RSS (VmHWM) of this process, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

/// Counts the serial lines the log shows and those holding a raw control character.
struct Shown {
    lines: Arc<AtomicU64>,
    raw_control: Arc<AtomicU64>,
}

impl Reporter for Shown {
    fn event(&mut self, event: &Event<'_>) {
        if let Event::Serial { line, .. } = event {
            self.lines.fetch_add(1, Ordering::Relaxed);
            if line.chars().any(|c| c.is_control() && c != '\t') {
                self.raw_control.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[test]
fn a_console_flood_keeps_the_driver_memory_bounded() {
    let mb: usize = std::env::var("NTNG_FLOOD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let blocks = mb.div_ceil(16);
    let dir = std::env::temp_dir().join(format!("ntng-console-flood-{}", std::process::id()));
    ntng_engine::private::dir(&dir).unwrap();
    let console = Arc::new(Console::with_file(dir.join(FILE_NAME)));
    console.reset();
    let (lines, raw_control) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let shown = Shown {
        lines: lines.clone(),
        raw_control: raw_control.clone(),
    };
    let logger = Arc::new(Logger::new(Fanout::new(vec![Box::new(shown)])));

    // the peak from here on is the flood's (clear_refs resets VmHWM)
    let before = {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        peak_rss()
    };
    let (guest, driver) = UnixStream::pair().unwrap();
    let reader = console.spawn_reader(driver, "flood".into(), logger);
    let writer = std::thread::spawn(move || {
        let mut guest = guest;
        let mut crc = crc32fast::Hasher::new();
        let mut total = 0u64;
        let data = block(0);
        for n in 0..blocks {
            // vary each block's long line a little, without a copy of the block
            let head = [b'A' + (n % 26) as u8];
            guest.write_all(&head).unwrap();
            guest.write_all(&data).unwrap();
            crc.update(&head);
            crc.update(&data);
            total += 1 + data.len() as u64;
        }
        guest.write_all(b"FLOOD-END").unwrap();
        crc.update(b"FLOOD-END");
        (crc.finalize(), total + 9)
    });
    let (crc, total) = writer.join().unwrap();
    reader.join().unwrap();
    let growth = peak_rss().saturating_sub(before);
    eprintln!(
        "flood of {} MiB: peak RSS grew by {} MiB (before {} MiB)",
        total as usize / MIB,
        growth / MIB,
        before / MIB
    );
    assert!(
        growth < PEAK_GROWTH_BOUND,
        "peak RSS grew by {growth} bytes for a {total}-byte flood (bound {PEAK_GROWTH_BOUND})"
    );

    // the file has every byte (and a newline ending the unfinished last line)
    let mut file = std::fs::File::open(dir.join(FILE_NAME)).unwrap();
    let mut buf = vec![0u8; 4 * MIB];
    let (mut got_crc, mut got_total, mut last) = (crc32fast::Hasher::new(), 0u64, 0u8);
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let n_data = n.min((total - got_total.min(total)) as usize);
        got_crc.update(&buf[..n_data]);
        got_total += n as u64;
        last = buf[n - 1];
    }
    assert_eq!((got_total, last), (total + 1, b'\n'));
    assert_eq!(got_crc.finalize(), crc);

    // the lines in memory: the newest, cut at the bound, the log without raw control characters
    assert_eq!(console.tail(1), ["FLOOD-END"]);
    assert!(console.tail(usize::MAX).iter().all(|l| l.len() <= MAX_LINE));
    assert!(lines.load(Ordering::Relaxed) > blocks as u64 * (10 * MIB / MAX_LINE) as u64);
    assert_eq!(raw_control.load(Ordering::Relaxed), 0);
    assert!(console.unread_dropped() > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
