//! Upstream's XML log (`$LOGFILE`): `<logfile>` holding `<line>`s and `<nest><head>…</head>
//! … </nest>` blocks, the input of nixpkgs' `log2html.xsl`. Console lines are `<line
//! machine="…" type="serial">` with control characters removed. Unlike upstream, blocks left
//! open by an exception are closed at the end, so the file is always well-formed XML.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::event::{Event, Reporter};

/// Writes the XML log as events arrive.
pub struct XmlLogReporter {
    out: BufWriter<Box<dyn Write + Send>>,
    open_nests: usize,
    closed: bool,
    /// What the log is, for an error: `the XML log <path>`.
    target: String,
    /// A write failed: nothing more is written; the failure is reported once.
    failure: Option<String>,
    broken: bool,
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // XML 1.0 cannot hold most control characters; tabs and newlines stay
            c if c.is_control() && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
}

fn element(tag: &str, attrs: &[(&str, &str)], text: &str) -> String {
    let mut s = format!("<{tag}");
    for (k, v) in attrs {
        s.push_str(&format!(" {k}=\""));
        escape(v, &mut s);
        s.push('"');
    }
    s.push('>');
    escape(text, &mut s);
    s.push_str(&format!("</{tag}>\n"));
    s
}

impl XmlLogReporter {
    /// Creates (truncates) the file at `path` and writes the document's start.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut log = Self::new(Box::new(File::create(path)?))?;
        log.target = format!("the XML log {}", path.display());
        Ok(log)
    }

    /// Writes the document's start to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let mut out = BufWriter::new(out);
        out.write_all(b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>\n")?;
        Ok(XmlLogReporter {
            out,
            open_nests: 0,
            closed: false,
            target: "the XML log".to_string(),
            failure: None,
            broken: false,
        })
    }

    /// Writes `text`; `flush` pushes it to the file now (so that a full disk is noticed
    /// while the run can still fail, not only at its end).
    fn write(&mut self, text: &str, flush: bool) {
        if self.closed || self.broken {
            return;
        }
        let written = self.out.write_all(text.as_bytes()).and_then(|()| {
            if flush {
                self.out.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.broken = true;
            self.failure = Some(format!("cannot write {}: {e}", self.target));
        }
    }
}

fn machine_attr(machine: Option<&str>) -> Vec<(&str, &str)> {
    machine.map(|m| vec![("machine", m)]).unwrap_or_default()
}

impl Reporter for XmlLogReporter {
    fn event(&mut self, event: &Event<'_>) {
        let text = match *event {
            Event::Line { machine, msg } => element("line", &machine_attr(machine), msg),
            Event::BlockStart { machine, msg } => {
                self.open_nests += 1;
                format!("<nest>\n{}", element("head", &machine_attr(machine), msg))
            }
            Event::BlockEnd { msg, seconds, .. } => {
                let finished = format!("(finished: {msg}, in {seconds:.2} seconds)");
                let mut s = element("line", &[], &finished);
                if self.open_nests > 0 {
                    self.open_nests -= 1;
                    s.push_str("</nest>\n");
                }
                s
            }
            Event::Serial {
                machine,
                line,
                shown,
            } => {
                if !shown {
                    return;
                }
                element("line", &[("machine", machine), ("type", "serial")], line)
            }
            Event::TestError { msg } | Event::Warning { msg } => element("line", &[], msg),
            _ => return,
        };
        // console lines can come by the thousand: they are flushed with the next log line
        let flush = !matches!(event, Event::Serial { .. });
        self.write(&text, flush);
    }

    fn finish(&mut self) {
        let mut tail = "</nest>\n".repeat(self.open_nests);
        tail.push_str("</logfile>\n");
        self.write(&tail, true);
        self.open_nests = 0;
        self.closed = true;
    }

    fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A disk that is full.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_fails_the_run_once_with_a_test_error() {
        let log = crate::log::Logger::default();
        log.add_reporter(Box::new(XmlLogReporter::new(Box::new(Full)).unwrap()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        log.add_reporter(Box::new(Errors(errors.clone())));
        assert!(!log.failed());
        log.log("one", None);
        log.log("two", None);
        log.finish_run(None);
        assert!(log.failed());
        assert_eq!(
            *errors.lock().unwrap(),
            vec!["cannot write the XML log: No space left on device (os error 28)".to_string()]
        );
    }

    struct Errors(Arc<Mutex<Vec<String>>>);

    impl Reporter for Errors {
        fn event(&mut self, event: &Event<'_>) {
            if let Event::TestError { msg } = event {
                self.0.lock().unwrap().push(msg.to_string());
            }
        }
    }

    #[test]
    fn lines_nests_and_serial_lines() {
        let dir = std::env::temp_dir().join(format!("ntng-xmllog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.xml");
        let mut r = XmlLogReporter::create(&path).unwrap();
        r.event(&Event::BlockStart {
            machine: None,
            msg: "subtest: a & b",
        });
        r.event(&Event::Line {
            machine: Some("server"),
            msg: "must succeed: echo \"<hi>\"",
        });
        r.event(&Event::Serial {
            machine: "server",
            line: "\x1b[1mbold\x07",
            shown: true,
        });
        r.event(&Event::Serial {
            machine: "server",
            line: "muted",
            shown: false,
        });
        r.event(&Event::BlockEnd {
            machine: None,
            msg: "subtest: a & b",
            seconds: 1.5,
        });
        r.event(&Event::BlockStart {
            machine: None,
            msg: "left open",
        });
        r.finish();
        r.event(&Event::Line {
            machine: None,
            msg: "after the end",
        });
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>\n\
             <nest>\n<head>subtest: a &amp; b</head>\n\
             <line machine=\"server\">must succeed: echo &quot;&lt;hi&gt;&quot;</line>\n\
             <line machine=\"server\" type=\"serial\">[1mbold</line>\n\
             <line>(finished: subtest: a &amp; b, in 1.50 seconds)</line>\n</nest>\n\
             <nest>\n<head>left open</head>\n</nest>\n</logfile>\n"
        );
    }
}
