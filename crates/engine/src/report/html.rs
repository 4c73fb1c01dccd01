//! The HTML report: one self-contained file (styles, script, screenshots inline) that any
//! browser opens from disk. The failures, the tests, the console logs and the screenshots
//! are plain HTML; the timeline (one lane per machine, tests and subtests as bands) is drawn
//! by a small script from the spans, embedded as JSON.

use std::fmt::Write as _;
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::Timeline;
use crate::trace::{AttrValue, SpanKind, SpanRecord, SpanStatus};

const TEMPLATE: &str = include_str!("report.html");

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn secs_since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn span_json(t0: SystemTime, now: SystemTime, s: &SpanRecord) -> Value {
    let attrs: Map<String, Value> = s
        .attrs
        .iter()
        .map(|(k, v)| {
            let v = match v {
                AttrValue::Str(x) => json!(x),
                AttrValue::Int(x) => json!(x),
                AttrValue::Bool(x) => json!(x),
            };
            (k.to_string(), v)
        })
        .collect();
    let (status, error) = match &s.status {
        SpanStatus::Ok => ("ok", None),
        SpanStatus::Unset => ("open", None),
        SpanStatus::Error(e) => ("error", Some(e.as_str())),
    };
    json!({
        "id": s.id.to_string(),
        "parent": s.parent.map(|p| p.to_string()),
        "kind": s.kind.as_str(),
        "name": s.name,
        "machine": s.machine,
        "start": secs_since(t0, s.start),
        "end": secs_since(t0, s.end.unwrap_or(now)),
        "status": status,
        "error": error,
        "attrs": attrs,
    })
}

/// The report's HTML.
pub fn render(
    t: &Timeline,
    open: &[SpanRecord],
    title: &str,
    consoles: &[(String, String)],
) -> String {
    let now = SystemTime::now();
    let t0 = t
        .spans
        .iter()
        .chain(open)
        .map(|s| s.start)
        .min()
        .unwrap_or(t.started);
    let spans: Vec<&SpanRecord> = t.spans.iter().chain(open).collect();
    // The badge says what the exit status says: the ended run's own outcome (a failed
    // subtest the script caught is failed in the table, and the run passed).
    let run = spans
        .iter()
        .find(|s| s.kind == SpanKind::Run && s.end.is_some());
    let failed = match run {
        Some(run) => matches!(run.status, SpanStatus::Error(_)),
        None => {
            !t.errors.is_empty()
                || spans.iter().any(|s| {
                    matches!(s.kind, SpanKind::Run | SpanKind::Test | SpanKind::Subtest)
                        && matches!(s.status, SpanStatus::Error(_))
                })
        }
    };
    let total = spans
        .iter()
        .map(|s| secs_since(t0, s.end.unwrap_or(now)))
        .fold(0.0, f64::max);
    let mut machines: Vec<String> = consoles.iter().map(|(m, _)| m.clone()).collect();
    for s in &spans {
        if let Some(m) = &s.machine {
            if !machines.contains(m) {
                machines.push(m.clone());
            }
        }
    }
    let data = json!({
        "total": total,
        "machines": machines,
        "spans": spans.iter().map(|s| span_json(t0, now, s)).collect::<Vec<_>>(),
        "screenshots": t.screenshots.iter().map(|(when, m, _)| json!({
            "t": secs_since(t0, *when), "machine": m,
        })).collect::<Vec<_>>(),
    });
    // JSON inside <script>: no "</" may close the element early.
    let data = data.to_string().replace("</", "<\\/");

    let status = if failed { "failed" } else { "passed" };
    let started = t0
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut body = String::new();
    let _ = write!(
        body,
        "<header><h1>{}</h1><p><span class=\"badge {status}\" id=\"status\">{status}</span> \
         total {total:.2} s · {} spans · <span class=\"started\" data-unix=\"{started}\"></span>\
         </p></header>",
        escape(title),
        spans.len() + t.dropped,
    );
    body.push_str(&failures(t, &spans));
    body.push_str(&tests_table(t0, now, &spans));
    body.push_str(
        "<section id=\"timeline-section\"><h2>Timeline</h2><div id=\"legend\"></div>\
         <div id=\"timeline\"></div><div id=\"detail\">Hover over a bar for its details.</div>\
         </section>",
    );
    body.push_str(&screenshots(t));
    body.push_str(&console_logs(consoles));
    if t.dropped > 0 {
        let _ = write!(
            body,
            "<p class=\"note\">{} further operations are not shown.</p>",
            t.dropped
        );
    }
    TEMPLATE
        .replace("{{TITLE}}", &escape(title))
        .replace("{{BODY}}", &body)
        .replace("{{DATA}}", &data)
}

fn failures(t: &Timeline, spans: &[&SpanRecord]) -> String {
    let failed: Vec<&&SpanRecord> = spans
        .iter()
        .filter(|s| {
            matches!(s.kind, SpanKind::Test | SpanKind::Subtest)
                && matches!(s.status, SpanStatus::Error(_))
        })
        .collect();
    if t.errors.is_empty() && failed.is_empty() {
        return String::new();
    }
    let mut out = String::from("<section id=\"failures\"><h2>Failure</h2>");
    for s in failed {
        if let SpanStatus::Error(e) = &s.status {
            let _ = write!(
                out,
                "<h3>{} {}</h3><pre class=\"failure\">{}</pre>",
                s.kind.as_str(),
                escape(&s.name),
                escape(e)
            );
        }
    }
    if !t.errors.is_empty() {
        let text: Vec<&str> = t.errors.iter().map(|(_, l)| l.as_str()).collect();
        let _ = write!(
            out,
            "<h3>log</h3><pre class=\"failure\">{}</pre>",
            escape(&text.join("\n"))
        );
    }
    out.push_str("</section>");
    out
}

fn tests_table(t0: SystemTime, now: SystemTime, spans: &[&SpanRecord]) -> String {
    let mut rows: Vec<&&SpanRecord> = spans
        .iter()
        .filter(|s| matches!(s.kind, SpanKind::Test | SpanKind::Subtest))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    rows.sort_by_key(|r| r.start);
    let mut out = String::from(
        "<section id=\"tests\"><h2>Tests</h2><table><tr><th>kind</th><th>name</th>\
         <th>status</th><th>start</th><th>time</th></tr>",
    );
    for s in rows {
        let status = match s.status {
            SpanStatus::Ok => "passed",
            SpanStatus::Unset => "running",
            SpanStatus::Error(_) => "failed",
        };
        let _ = write!(
            out,
            "<tr class=\"{status}\"><td>{}</td><td>{}</td><td>{status}</td>\
             <td>{:.2} s</td><td>{:.2} s</td></tr>",
            s.kind.as_str(),
            escape(&s.name),
            secs_since(t0, s.start),
            secs_since(s.start, s.end.unwrap_or(now)),
        );
    }
    out.push_str("</table></section>");
    out
}

fn screenshots(t: &Timeline) -> String {
    if t.screenshots.is_empty() {
        return String::new();
    }
    let mut out = String::from("<section id=\"screenshots\"><h2>Screenshots</h2>");
    for (_, machine, path) in &t.screenshots {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read(path) {
            Ok(png) => {
                let _ = write!(
                    out,
                    "<figure><img alt=\"{n}\" src=\"data:image/png;base64,{}\">\
                     <figcaption>{m}: {n}</figcaption></figure>",
                    base64::engine::general_purpose::STANDARD.encode(png),
                    n = escape(&name),
                    m = escape(machine),
                );
            }
            Err(e) => {
                let _ = write!(
                    out,
                    "<p class=\"note\">{}: {} could not be read: {}</p>",
                    escape(machine),
                    escape(&path.display().to_string()),
                    escape(&e.to_string())
                );
            }
        }
    }
    out.push_str("</section>");
    out
}

fn console_logs(consoles: &[(String, String)]) -> String {
    if consoles.is_empty() {
        return String::new();
    }
    let mut out = String::from("<section id=\"consoles\"><h2>Console logs</h2>");
    for (machine, text) in consoles {
        let _ = write!(
            out,
            "<details class=\"console\" data-machine=\"{m}\"><summary>{m} ({} lines)</summary>\
             <pre>{}</pre></details>",
            text.lines().count(),
            escape(text),
            m = escape(machine),
        );
    }
    out.push_str("</section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Reporter};
    use crate::trace::{SpanTable, TraceId};

    #[test]
    fn report_contains_failures_tests_consoles_and_safe_data() {
        let mut table = SpanTable::new(TraceId::random(), None);
        let mut t = Timeline::default();
        let test = table
            .begin(SpanKind::Test, "test </script>", None, false)
            .id;
        let op = table
            .begin(SpanKind::Operation, "succeed", Some("server"), false)
            .id;
        for (id, status) in [
            (op, SpanStatus::Error("command `false` failed".into())),
            (test, SpanStatus::Error("boom".into())),
        ] {
            let r = table.end(id, status).unwrap();
            t.event(&Event::SpanEnd(&r));
        }
        t.event(&Event::TestError {
            msg: "Traceback <here>",
        });
        let html = render(
            &t,
            &[],
            "my test",
            &[("server".into(), "line <1>\nline 2".into())],
        );
        assert!(html.contains("<title>my test</title>"));
        assert!(html.contains("id=\"status\">failed<"));
        assert!(html.contains("Traceback &lt;here&gt;"));
        assert!(html.contains("<td>test &lt;/script&gt;</td>"));
        assert!(html.contains("server (2 lines)"));
        assert!(html.contains("line &lt;1&gt;"));
        // The span name inside the embedded JSON cannot end the script element.
        assert!(!html.contains("test </script>"));
        assert!(html.contains("test <\\/script>"));
    }

    #[test]
    fn the_badge_is_the_runs_outcome_when_a_caught_subtest_failed() {
        let mut table = SpanTable::new(TraceId::random(), None);
        let mut t = Timeline::default();
        let run = table.begin(SpanKind::Run, "run t.py", None, false).id;
        let sub = table
            .begin(SpanKind::Subtest, "expected to fail", None, false)
            .id;
        for (id, status) in [
            (sub, SpanStatus::Error("exit code 9".into())),
            (run, SpanStatus::Ok),
        ] {
            let r = table.end(id, status).unwrap();
            t.event(&Event::SpanEnd(&r));
        }
        t.event(&Event::TestError {
            msg: "Test \"expected to fail\" failed with error: \"exit code 9\"",
        });
        let html = render(&t, &[], "t", &[]);
        assert!(html.contains("id=\"status\">passed<"), "the run passed");
        assert!(html.contains("<td>expected to fail</td><td>failed</td>"));
        assert!(html.contains("<h3>subtest expected to fail</h3>"));
    }
}
