//! The terminal reporter: upstream's log format on stderr and, when stderr is a terminal, a
//! status line at the bottom while machines boot ("booting: server 2.1 s · client 1.9 s"),
//! redrawn by a ticker and cleared before every log line so the two never mix.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::event::{Event, Reporter};
use crate::trace::SpanKind;

const BRIGHT_GREEN: &str = "\x1b[1m\x1b[32m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";
const CLEAR_LINE: &str = "\r\x1b[2K";
const TICK: Duration = Duration::from_millis(200);

/// Machines booting right now, for the status line.
#[derive(Default)]
struct Progress {
    booting: BTreeMap<String, Instant>,
    /// Whether the status line is on the screen.
    shown: bool,
}

impl Progress {
    fn line(&self) -> String {
        let parts: Vec<String> = self
            .booting
            .iter()
            .map(|(m, t)| format!("{m} {:.1} s", t.elapsed().as_secs_f64()))
            .collect();
        format!("booting: {}", parts.join(" · "))
    }

    /// Writes `text` (complete lines) and redraws the status line under it.
    fn write(&mut self, err: &mut impl Write, text: Option<&str>) {
        let mut out = String::new();
        if self.shown {
            out.push_str(CLEAR_LINE);
        }
        if let Some(t) = text {
            out.push_str(t);
            out.push('\n');
        }
        self.shown = !self.booting.is_empty();
        if self.shown {
            out.push_str(&format!("{DIM}{}{RESET}", self.line()));
        }
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }
}

/// Where the terminal reporter writes: stderr, or a buffer in tests.
type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// Upstream's terminal format.
pub struct TerminalReporter {
    color: bool,
    out: Output,
    /// Present when the status line is on (stderr is a terminal).
    progress: Option<Arc<Mutex<Progress>>>,
}

impl TerminalReporter {
    /// A reporter writing to stderr; `progress` turns the boot status line on.
    pub fn stderr(color: bool, progress: bool) -> Self {
        Self::new(color, progress, Box::new(std::io::stderr()))
    }

    /// A reporter writing to `out`.
    pub fn new(color: bool, progress: bool, out: Box<dyn Write + Send>) -> Self {
        TerminalReporter {
            color,
            out: Arc::new(Mutex::new(out)),
            progress: progress.then(Default::default),
        }
    }

    fn styled(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// The line an event prints, if any.
    pub fn render(&self, event: &Event<'_>) -> Option<String> {
        Some(match *event {
            Event::Line { machine, msg } => prefixed(machine, msg),
            Event::BlockStart { machine, msg } => {
                prefixed(machine, &self.styled(BRIGHT_GREEN, msg))
            }
            Event::BlockEnd {
                machine,
                msg,
                seconds,
            } => prefixed(
                machine,
                &format!("(finished: {msg}, in {seconds:.2} seconds)"),
            ),
            Event::Serial {
                machine,
                line,
                shown,
            } => {
                if !shown {
                    return None;
                }
                self.styled(DIM, &format!("{machine} # {line}"))
            }
            Event::TestError { msg } => format!("{}{msg}", self.styled(RED, "!!! ")),
            Event::Warning { msg } => self.styled(YELLOW, &format!("warning: {msg}")),
            _ => return None,
        })
    }

    fn track_boots(&self, event: &Event<'_>) -> bool {
        let Some(progress) = &self.progress else {
            return false;
        };
        let (record, starting) = match event {
            Event::SpanStart(r) => (r, true),
            Event::SpanEnd(r) => (r, false),
            _ => return false,
        };
        if record.kind != SpanKind::Boot {
            return false;
        }
        let machine = record.machine.clone().unwrap_or_default();
        let mut p = progress.lock().unwrap();
        if starting {
            let first = p.booting.is_empty();
            p.booting.insert(machine, Instant::now());
            if first {
                spawn_ticker(Arc::downgrade(progress), self.out.clone());
            }
        } else {
            p.booting.remove(&machine);
        }
        true
    }
}

fn spawn_ticker(progress: Weak<Mutex<Progress>>, out: Output) {
    let _ = std::thread::Builder::new()
        .name("ntng-progress".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            let Some(p) = progress.upgrade() else { return };
            let mut p = p.lock().unwrap();
            p.write(&mut *out.lock().unwrap(), None);
            if p.booting.is_empty() {
                return;
            }
        });
}

/// `machine: msg`, or `msg`.
pub fn prefixed(machine: Option<&str>, msg: &str) -> String {
    match machine {
        Some(m) => format!("{m}: {msg}"),
        None => msg.to_string(),
    }
}

impl Reporter for TerminalReporter {
    fn event(&mut self, event: &Event<'_>) {
        let boots_changed = self.track_boots(event);
        let line = self.render(event);
        if line.is_none() && !boots_changed {
            return;
        }
        match &self.progress {
            Some(p) => p
                .lock()
                .unwrap()
                .write(&mut *self.out.lock().unwrap(), line.as_deref()),
            None => {
                if let Some(mut l) = line {
                    l.push('\n');
                    let _ = self.out.lock().unwrap().write_all(l.as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_cleared_before_a_log_line() {
        let mut p = Progress::default();
        p.booting.insert("server".into(), Instant::now());
        let mut out = Vec::new();
        p.write(&mut out, Some("first"));
        p.write(&mut out, Some("second"));
        p.booting.clear();
        p.write(&mut out, Some("third"));
        let text = String::from_utf8(out).unwrap();
        let want = format!(
            "first\n{DIM}booting: server 0.0 s{RESET}{CLEAR_LINE}second\n\
             {DIM}booting: server 0.0 s{RESET}{CLEAR_LINE}third\n"
        );
        assert_eq!(text, want);
    }
}
