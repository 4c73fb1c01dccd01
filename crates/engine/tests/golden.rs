//! Golden files: one fixed sequence of events, as a run would log it, through the terminal,
//! JUnit and XML log reporters, compared byte for byte with `tests/golden/`. Durations come
//! from the events (terminal, XML) or from a clock that advances 0.25 s per reading (JUnit),
//! so the files are the same on every run.
//!
//! After an intended change of an output, regenerate the files and review their diff:
//!
//! ```sh
//! NTNG_UPDATE_GOLDEN=1 cargo test -p nixos-test-ng-engine --test golden
//! git diff crates/engine/tests/golden/
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ntng_engine::event::{Event, Reporter};
use ntng_engine::junit::JunitCollector;
use ntng_engine::terminal::TerminalReporter;
use ntng_engine::trace::{SpanKind, SpanRecord, SpanStatus, SpanTable, TraceId};
use ntng_engine::xml_log::XmlLogReporter;

const FAILURE: &str = "command `exit 9` failed (exit code 9)";
const SUBTEST: &str = "can reach <server> & \"client\"";

/// The boot span of `server`, begun and ended (the three reporters print nothing for spans
/// without the boot status line).
fn boot_span() -> (SpanRecord, SpanRecord) {
    let mut table = SpanTable::new(TraceId::random(), None);
    let started = table.begin(SpanKind::Boot, "boot server", Some("server"), true);
    let ended = table.end(started.id, SpanStatus::Ok).unwrap();
    (started, ended)
}

/// Feeds a run's events to `r`: warnings, nested blocks, console lines shown and hidden, a
/// passing subtest with a nested one, a failing subtest and its traceback, a screenshot, and
/// blocks left open by the failure.
fn run(r: &mut dyn Reporter) {
    let (boot_start, boot_end) = boot_span();
    let failed = format!("Test \"expected to fail\" failed with error: \"{FAILURE}\"");
    let subtest_head = format!("subtest: {SUBTEST}");
    let events = [
        Event::Warning {
            msg: "--keep-vm-state is deprecated, use --keep-machine-state",
        },
        Event::Line {
            machine: None,
            msg: "Machine state will be reset. To keep it, pass --keep-machine-state",
        },
        Event::BlockStart {
            machine: None,
            msg: "run the VM test script",
        },
        Event::SpanStart(&boot_start),
        Event::BlockStart {
            machine: Some("server"),
            msg: "waiting for the VM to finish booting",
        },
        Event::Serial {
            machine: "server",
            line: "[    0.000000] Linux version 6.1.0",
            shown: true,
        },
        Event::Line {
            machine: Some("server"),
            msg: "connected to guest root shell",
        },
        Event::SpanEnd(&boot_end),
        Event::BlockEnd {
            machine: Some("server"),
            msg: "waiting for the VM to finish booting",
            seconds: 1.5,
        },
        Event::SubtestStart { name: SUBTEST },
        Event::BlockStart {
            machine: None,
            msg: &subtest_head,
        },
        Event::BlockStart {
            machine: Some("client"),
            msg: "must succeed: curl http://server/?a=1&b=<2>",
        },
        Event::Serial {
            machine: "client",
            line: "\x1b[1mbold\x1b[0m and a bell\x07",
            shown: true,
        },
        Event::BlockEnd {
            machine: Some("client"),
            msg: "must succeed: curl http://server/?a=1&b=<2>",
            seconds: 0.254,
        },
        Event::SubtestStart { name: "inner" },
        Event::BlockStart {
            machine: None,
            msg: "subtest: inner",
        },
        Event::Line {
            machine: None,
            msg: "inside the inner subtest",
        },
        Event::BlockEnd {
            machine: None,
            msg: "subtest: inner",
            seconds: 0.1,
        },
        Event::SubtestEnd {
            name: "inner",
            failure: None,
        },
        Event::BlockEnd {
            machine: None,
            msg: &subtest_head,
            seconds: 0.5,
        },
        Event::SubtestEnd {
            name: SUBTEST,
            failure: None,
        },
        Event::SubtestStart {
            name: "expected to fail",
        },
        Event::BlockStart {
            machine: None,
            msg: "subtest: expected to fail",
        },
        Event::BlockStart {
            machine: Some("server"),
            msg: "must succeed: exit 9",
        },
        Event::Serial {
            machine: "server",
            line: "a console line while serial output is off",
            shown: false,
        },
        Event::TestError { msg: &failed },
        Event::SubtestEnd {
            name: "expected to fail",
            failure: Some(&failed),
        },
        Event::TestError {
            msg: "Traceback (most recent call last):",
        },
        Event::TestError {
            msg: "  File \"<string>\", line 9, in <module>",
        },
        Event::TestError { msg: "" },
        Event::TestError {
            msg: "RequestedAssertionFailed: command `exit 9` failed (exit code 9)",
        },
        Event::Screenshot {
            machine: "server",
            path: Path::new("/out/server-login.png"),
        },
        Event::Line {
            machine: None,
            msg: "test script finished in 2.75s",
        },
        Event::BlockStart {
            machine: None,
            msg: "cleanup",
        },
        Event::Line {
            machine: Some("server"),
            msg: "kill QemuMachine (pid 4242)",
        },
    ];
    for e in &events {
        r.event(e);
    }
    r.finish();
}

/// A writer whose bytes the test reads back.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file `name`, or rewrites it under NTNG_UPDATE_GOLDEN.
fn check(name: &str, actual: &str) {
    let path = golden(name);
    if std::env::var_os("NTNG_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (NTNG_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        actual == expected,
        "{} differs; after an intended change: NTNG_UPDATE_GOLDEN=1 cargo test -p \
         nixos-test-ng-engine --test golden\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn terminal() {
    for (color, name) in [(false, "terminal.txt"), (true, "terminal-color.txt")] {
        let out = Buffer::default();
        run(&mut TerminalReporter::new(
            color,
            false,
            Box::new(out.clone()),
        ));
        check(name, &out.text());
    }
}

#[test]
fn xml_log() {
    let out = Buffer::default();
    run(&mut XmlLogReporter::new(Box::new(out.clone())).unwrap());
    check("log.xml", &out.text());
}

#[test]
fn junit() {
    let base = Instant::now();
    let readings = AtomicU32::new(0);
    let clock = move || base + Duration::from_millis(250) * readings.fetch_add(1, Ordering::SeqCst);
    let mut junit = JunitCollector::with_clock(Box::new(clock));
    run(&mut junit);
    check("junit.xml", &junit.render());
}
