//! What the run did, kept for the reports written at its end: the HTML report
//! ([`html`]) and the timing summary ([`summary`]). [`Timeline`] is the reporter that
//! collects it from the log's events: finished spans, test errors and screenshots.

pub mod html;
pub mod summary;

use std::path::PathBuf;
use std::time::SystemTime;

use crate::event::{Event, Reporter};
use crate::trace::{SpanKind, SpanRecord};

/// Operation spans kept at most (about 3 MB): a run of more commands keeps its first ones,
/// those later ones that are among the slowest (the timing summary lists them), and every
/// test, subtest, boot and block.
pub(crate) const MAX_OPERATIONS: usize = 4_000;

/// The record of a run.
pub struct Timeline {
    pub started: SystemTime,
    pub spans: Vec<SpanRecord>,
    /// Operation spans not kept (beyond [`MAX_OPERATIONS`]).
    pub dropped: usize,
    /// `!!!` lines, with when they were logged.
    pub errors: Vec<(SystemTime, String)>,
    /// Screenshots: when, which machine, where.
    pub screenshots: Vec<(SystemTime, String, PathBuf)>,
    operations: usize,
    /// The longest operation times seen, longest first (at most [`summary::SLOWEST`]).
    slowest: Vec<f64>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            started: SystemTime::now(),
            spans: Vec::new(),
            dropped: 0,
            errors: Vec::new(),
            screenshots: Vec::new(),
            operations: 0,
            slowest: Vec::new(),
        }
    }
}

impl Reporter for Timeline {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::SpanEnd(record) => {
                if record.kind == SpanKind::Operation {
                    let among_slowest = self.note_time(record.seconds());
                    if self.operations >= MAX_OPERATIONS && !among_slowest {
                        self.dropped += 1;
                        return;
                    }
                    self.operations += 1;
                }
                self.spans.push((*record).clone());
            }
            Event::TestError { msg } => self.errors.push((SystemTime::now(), msg.to_string())),
            Event::Screenshot { machine, path } => {
                self.screenshots
                    .push((SystemTime::now(), machine.to_string(), path.to_path_buf()))
            }
            _ => {}
        }
    }
}

impl Timeline {
    /// Records an operation's time; true when it is among the slowest so far.
    fn note_time(&mut self, seconds: f64) -> bool {
        let at = self.slowest.partition_point(|&t| t >= seconds);
        if at >= summary::SLOWEST {
            return false;
        }
        self.slowest.insert(at, seconds);
        self.slowest.truncate(summary::SLOWEST);
        true
    }

    /// The run's span, once finished.
    pub fn run(&self) -> Option<&SpanRecord> {
        self.spans.iter().find(|s| s.kind == SpanKind::Run)
    }
}
