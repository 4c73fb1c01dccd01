//! JUnit XML: one test case per subtest (or a single `main` case when the script has no
//! subtests), each with its own status, time, failure message and captured output.

use std::path::Path;
use std::time::{Duration, Instant};

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::event::{Event, Reporter};

/// Where the collector reads the time (the real clock, or a fixed sequence in tests).
pub type Clock = Box<dyn Fn() -> Instant + Send>;

/// The most of a case's captured output kept (its end): a guest flooding its console must
/// not grow the collector without bound.
pub const OUTPUT_KEPT: usize = 4 << 20;

/// A case's captured output: its last [`OUTPUT_KEPT`] bytes or so, and how many went before.
#[derive(Default)]
struct Output {
    text: String,
    omitted: u64,
}

impl Output {
    fn push_line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > 2 * OUTPUT_KEPT {
            let mut cut = self.text.len() - OUTPUT_KEPT;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            // whole lines only
            cut = self.text[cut..].find('\n').map_or(cut, |i| cut + i + 1);
            self.omitted += cut as u64;
            self.text.drain(..cut);
        }
    }

    fn render(&self) -> String {
        if self.omitted == 0 {
            return self.text.clone();
        }
        format!(
            "[nixos-test-ng: {} bytes of earlier output left out; the console log file has them]\n{}",
            self.omitted, self.text
        )
    }
}

struct Case {
    name: String,
    output: Output,
    failure: Option<String>,
    started: Instant,
    nested: Duration,
    time: Duration,
}

impl Case {
    fn new(name: &str, started: Instant) -> Self {
        Case {
            name: name.to_string(),
            output: Output::default(),
            failure: None,
            started,
            nested: Duration::ZERO,
            time: Duration::ZERO,
        }
    }
}

/// Collects test cases from log events.
pub struct JunitCollector {
    main: Case,
    /// A failure outside every subtest: `main` is then reported beside the subtests.
    main_failed_itself: bool,
    /// The subtest that just failed: the traceback printed after it closed belongs to it.
    just_failed: Option<usize>,
    done: Vec<Case>,
    active: Vec<Case>,
    clock: Clock,
}

impl Default for JunitCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl JunitCollector {
    /// An empty collector; the `main` case starts now.
    pub fn new() -> Self {
        Self::with_clock(Box::new(Instant::now))
    }

    /// An empty collector reading the time from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        JunitCollector {
            main: Case::new("main", clock()),
            main_failed_itself: false,
            just_failed: None,
            done: Vec::new(),
            active: Vec::new(),
            clock,
        }
    }

    fn current(&mut self) -> &mut Case {
        self.active.last_mut().unwrap_or(&mut self.main)
    }

    fn record(&mut self, event: &Event<'_>) {
        if matches!(event, Event::BlockStart { .. }) && self.active.is_empty() {
            self.just_failed = None;
        }
        let text = match *event {
            Event::Line { machine, msg } | Event::BlockStart { machine, msg } => match machine {
                Some(m) => format!("{m}: {msg}"),
                None => msg.to_string(),
            },
            Event::BlockEnd { .. }
            | Event::SpanStart(_)
            | Event::SpanEnd(_)
            | Event::Screenshot { .. } => return,
            Event::Serial { machine, line, .. } => format!("{machine} # {line}"),
            Event::Warning { msg } => format!("warning: {msg}"),
            Event::TestError { msg } => {
                let case = match (self.active.is_empty(), self.just_failed) {
                    (true, Some(i)) => &mut self.done[i],
                    (true, None) => {
                        self.main_failed_itself = true;
                        &mut self.main
                    }
                    (false, _) => self.active.last_mut().expect("an active subtest"),
                };
                let failure = case.failure.get_or_insert_with(String::new);
                if !failure.is_empty() {
                    failure.push('\n');
                }
                failure.push_str(msg);
                self.main.failure.get_or_insert_with(String::new);
                format!("!!! {msg}")
            }
            Event::SubtestStart { name } => {
                self.just_failed = None;
                let now = (self.clock)();
                self.active.push(Case::new(name, now));
                return;
            }
            Event::SubtestEnd { name, failure } => {
                if let Some(mut case) = self.active.pop() {
                    debug_assert_eq!(case.name, name);
                    if let Some(f) = failure {
                        case.failure.get_or_insert_with(|| f.to_string());
                    }
                    let total = (self.clock)().saturating_duration_since(case.started);
                    case.time = total.saturating_sub(case.nested);
                    if let Some(parent) = self.active.last_mut() {
                        parent.nested += total;
                    } else {
                        self.main.nested += total;
                    }
                    self.just_failed = case.failure.is_some().then_some(self.done.len());
                    self.done.push(case);
                }
                return;
            }
        };
        let case = self.current();
        case.output.push_line(&text);
    }

    /// Renders the report as upstream names it: suite "NixOS integration test".
    pub fn render(&self) -> String {
        let mut suite = TestSuite::new("NixOS integration test");
        let mut cases: Vec<&Case> = self.done.iter().collect();
        cases.extend(self.active.iter());
        let main_time = (self.clock)()
            .saturating_duration_since(self.main.started)
            .saturating_sub(self.main.nested);
        if cases.is_empty() || self.main_failed_itself {
            cases.push(&self.main);
        }
        for case in cases {
            let status = match &case.failure {
                Some(msg) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(msg.lines().last().unwrap_or(msg).to_string());
                    s.set_description(msg.clone());
                    s
                }
                None => TestCaseStatus::success(),
            };
            let mut tc = TestCase::new(case.name.clone(), status);
            let time = if case.name == "main" && std::ptr::eq(case, &self.main) {
                main_time
            } else {
                case.time
            };
            tc.set_time(time);
            tc.set_system_out(case.output.render());
            suite.add_test_case(tc);
        }
        let mut report = Report::new("nixos-test-ng");
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }

    /// Writes the report to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.render())
    }
}

impl Reporter for JunitCollector {
    fn event(&mut self, event: &Event<'_>) {
        self.record(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_case_per_subtest_with_status() {
        let mut j = JunitCollector::new();
        j.event(&Event::SubtestStart { name: "a" });
        j.event(&Event::Line {
            machine: Some("m"),
            msg: "hello",
        });
        j.event(&Event::SubtestEnd {
            name: "a",
            failure: None,
        });
        j.event(&Event::SubtestStart { name: "b" });
        j.event(&Event::TestError { msg: "boom" });
        j.event(&Event::SubtestEnd {
            name: "b",
            failure: Some("boom"),
        });
        let xml = j.render();
        assert!(xml.contains("name=\"a\""), "{xml}");
        assert!(xml.contains("name=\"b\""), "{xml}");
        assert!(!xml.contains("name=\"main\""), "{xml}");
        assert!(xml.contains("m: hello"), "{xml}");
        assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
    }

    #[test]
    fn a_flood_keeps_the_output_bounded_with_its_end() {
        let mut j = JunitCollector::new();
        let line = "x".repeat(1000);
        for i in 0..20_000 {
            j.event(&Event::Line {
                machine: Some("m"),
                msg: &format!("{i} {line}"),
            });
        }
        j.event(&Event::Line {
            machine: Some("m"),
            msg: "the last line",
        });
        assert!(j.main.output.text.len() <= 2 * OUTPUT_KEPT + 2000);
        let xml = j.render();
        assert!(xml.contains("m: the last line"), "the end is kept");
        assert!(xml.contains("m: 19999 x"), "whole lines before it");
        assert!(!xml.contains("m: 0 x"), "the start is left out");
        assert!(xml.contains("bytes of earlier output left out"));
        assert!(xml.len() < 3 * OUTPUT_KEPT, "{}", xml.len());
    }

    #[test]
    fn a_failure_outside_subtests_is_reported() {
        let mut j = JunitCollector::new();
        j.event(&Event::SubtestStart { name: "a" });
        j.event(&Event::SubtestEnd {
            name: "a",
            failure: None,
        });
        j.event(&Event::TestError { msg: "later" });
        let xml = j.render();
        assert!(xml.contains("name=\"main\""), "{xml}");
        assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
    }

    #[test]
    fn the_traceback_after_a_failed_subtest_belongs_to_it() {
        let mut j = JunitCollector::new();
        j.event(&Event::SubtestStart { name: "a" });
        j.event(&Event::TestError {
            msg: "Test \"a\" failed",
        });
        j.event(&Event::SubtestEnd {
            name: "a",
            failure: Some("x"),
        });
        j.event(&Event::Line {
            machine: None,
            msg: "test script finished",
        });
        j.event(&Event::TestError { msg: "Traceback" });
        let xml = j.render();
        assert!(!xml.contains("name=\"main\""), "{xml}");
        assert!(xml.contains("Traceback"), "{xml}");
    }

    #[test]
    fn main_case_without_subtests() {
        let j = JunitCollector::new();
        assert!(j.render().contains("name=\"main\""));
    }
}
