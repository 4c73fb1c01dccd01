//! The timing summary printed at the end of a run: the total, each machine's boot, and the
//! slowest operations.

use super::Timeline;
use crate::trace::{attr, SpanKind, SpanRecord};

/// How many of the slowest operations are listed.
const SLOWEST: usize = 5;

fn label(s: &SpanRecord) -> String {
    let what = s
        .attr(attr::MESSAGE)
        .map(|m| m.to_string())
        .unwrap_or_else(|| s.name.clone());
    let what = if what.chars().count() > 100 {
        format!("{}…", what.chars().take(100).collect::<String>())
    } else {
        what
    };
    match &s.machine {
        Some(m) => format!("{m}: {what}"),
        None => what,
    }
}

/// The summary's lines.
pub fn lines(t: &Timeline) -> Vec<String> {
    let total = match t.run() {
        Some(run) => run.seconds(),
        None => t.started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
    };
    let mut out = vec![
        "timing summary:".to_string(),
        format!("  total: {total:.2} s"),
    ];
    let mut boots: Vec<&SpanRecord> = t
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Boot)
        .collect();
    boots.sort_by(|a, b| a.machine.cmp(&b.machine).then(a.start.cmp(&b.start)));
    if !boots.is_empty() {
        let parts: Vec<String> = boots
            .iter()
            .map(|b| {
                let failed = if matches!(b.status, crate::trace::SpanStatus::Error(_)) {
                    " (failed)"
                } else {
                    ""
                };
                format!(
                    "{} {:.2} s{failed}",
                    b.machine.as_deref().unwrap_or("?"),
                    b.seconds()
                )
            })
            .collect();
        out.push(format!("  boot (start → connected): {}", parts.join(", ")));
    }
    let mut ops: Vec<&SpanRecord> = t
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Operation)
        .collect();
    ops.sort_by(|a, b| b.seconds().total_cmp(&a.seconds()));
    if !ops.is_empty() {
        out.push("  slowest operations:".to_string());
        for s in ops.iter().take(SLOWEST) {
            out.push(format!("    {:>8.2} s  {}", s.seconds(), label(s)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Event;
    use crate::trace::{SpanStatus, SpanTable, TraceId};

    #[test]
    fn total_boots_and_slowest_first() {
        let mut table = SpanTable::new(TraceId::random(), None);
        let mut t = Timeline::default();
        let run = table.begin(SpanKind::Run, "run", None, false).id;
        let boot = table.begin(SpanKind::Boot, "boot b", Some("b"), true).id;
        let r = table.end(boot, SpanStatus::Error("died".into())).unwrap();
        t.event(&Event::SpanEnd(&r));
        for (i, ms) in [5u64, 30, 10].iter().enumerate() {
            let mut r = table.begin(SpanKind::Operation, "succeed", Some("a"), false);
            r.set_attr(attr::MESSAGE, format!("must succeed: cmd{i}").into());
            table.end(r.id, SpanStatus::Ok);
            r.end = Some(r.start + std::time::Duration::from_millis(*ms));
            t.event(&Event::SpanEnd(&r));
        }
        let r = table.end(run, SpanStatus::Ok).unwrap();
        t.event(&Event::SpanEnd(&r));
        let lines = lines(&t);
        assert_eq!(lines[0], "timing summary:");
        assert!(lines[1].starts_with("  total: "), "{lines:?}");
        assert!(
            lines[2].contains("b ") && lines[2].ends_with("(failed)"),
            "{lines:?}"
        );
        assert_eq!(lines[3], "  slowest operations:");
        assert!(lines[4].ends_with("a: must succeed: cmd1"), "{lines:?}");
        assert!(lines[5].ends_with("a: must succeed: cmd2"), "{lines:?}");
        assert!(lines[6].ends_with("a: must succeed: cmd0"), "{lines:?}");
    }
}
