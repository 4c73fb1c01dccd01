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
        Self::new(Box::new(File::create(path)?))
    }

    /// Writes the document's start to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let mut out = BufWriter::new(out);
        out.write_all(b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>\n")?;
        Ok(XmlLogReporter {
            out,
            open_nests: 0,
            closed: false,
        })
    }

    fn write(&mut self, text: &str) {
        if !self.closed {
            let _ = self.out.write_all(text.as_bytes());
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
        self.write(&text);
    }

    fn finish(&mut self) {
        let mut tail = "</nest>\n".repeat(self.open_nests);
        tail.push_str("</logfile>\n");
        self.write(&tail);
        self.open_nests = 0;
        self.closed = true;
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
