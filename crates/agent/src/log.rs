//! The agent's log: one line per event, to `--log PATH` or stderr.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

static SINK: OnceLock<Mutex<Box<dyn Write + Send>>> = OnceLock::new();

/// Sets where lines go; before this (or without it) they go to stderr.
pub fn init(sink: Box<dyn Write + Send>) {
    let _ = SINK.set(Mutex::new(sink));
}

pub fn line(args: Arguments<'_>) {
    let text = format!("nixos-test-ng-agent: {args}\n");
    match SINK.get() {
        Some(sink) => {
            let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
            let _ = sink.write_all(text.as_bytes());
            let _ = sink.flush();
        }
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}
