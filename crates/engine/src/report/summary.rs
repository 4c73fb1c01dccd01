//! The timing summary printed at the end of a run: the total, each machine's boot, and the
//! slowest operations.

use super::Timeline;
use crate::trace::{attr, SpanKind, SpanRecord};

/// How many of the slowest operations are listed.
pub(crate) const SLOWEST: usize = 5;

fn label(s: &SpanRecord) -> String {
    let what = match (s.attr(attr::MESSAGE), s.attr(attr::COMMAND)) {
        (Some(m), _) => m.to_string(),
        (None, Some(c)) => format!("{}: {c}", s.name),
        (None, None) => s.name.clone(),
    };
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
    // An operation's own time leaves out its wait for the machine's boot (the first command
    // of a machine usually waits for it), which the boot line above already shows.
    let mut ops: Vec<(f64, f64, &SpanRecord)> = t
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Operation)
        .map(|s| {
            let booting: f64 = boots
                .iter()
                .filter(|b| b.machine == s.machine)
                .map(|b| overlap(s, b))
                .sum();
            ((s.seconds() - booting).max(0.0), booting, s)
        })
        .collect();
    ops.sort_by(|a, b| b.0.total_cmp(&a.0));
    if !ops.is_empty() {
        out.push("  slowest operations (without waiting for a boot):".to_string());
        for (own, booting, s) in ops.iter().take(SLOWEST) {
            let waited = if *booting >= 0.01 {
                format!(" (and {booting:.2} s waiting for the boot)")
            } else {
                String::new()
            };
            out.push(format!("    {own:>8.2} s  {}{waited}", label(s)));
        }
    }
    out
}

/// Seconds during which both spans were open.
fn overlap(a: &SpanRecord, b: &SpanRecord) -> f64 {
    let (Some(a_end), Some(b_end)) = (a.end, b.end) else {
        return 0.0;
    };
    let start = a.start.max(b.start);
    let end = a_end.min(b_end);
    end.duration_since(start).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Reporter};
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
        assert_eq!(
            lines[3],
            "  slowest operations (without waiting for a boot):"
        );
        assert!(lines[4].ends_with("a: must succeed: cmd1"), "{lines:?}");
        assert!(lines[5].ends_with("a: must succeed: cmd2"), "{lines:?}");
        assert!(lines[6].ends_with("a: must succeed: cmd0"), "{lines:?}");
    }

    #[test]
    fn a_long_run_keeps_its_first_operations_and_the_slowest_later_ones() {
        let mut table = SpanTable::new(TraceId::random(), None);
        let mut t = Timeline::default();
        let n = 3 * super::super::MAX_OPERATIONS;
        for i in 0..n {
            let mut r = table.begin(SpanKind::Operation, "succeed", Some("a"), false);
            r.set_attr(attr::MESSAGE, format!("must succeed: cmd{i}").into());
            table.end(r.id, SpanStatus::Ok);
            // every operation takes 1 ms, but one late one 900 ms
            let ms = if i == n - 10 { 900 } else { 1 };
            r.end = Some(r.start + std::time::Duration::from_millis(ms));
            t.event(&Event::SpanEnd(&r));
        }
        let kept = t.spans.len();
        assert!(kept <= super::super::MAX_OPERATIONS + SLOWEST + 1, "{kept}");
        assert_eq!(kept + t.dropped, n);
        let lines = lines(&t);
        let slow = format!("a: must succeed: cmd{}", n - 10);
        assert!(lines[3].ends_with(&slow), "{lines:?}");
    }

    #[test]
    fn the_wait_for_a_boot_is_not_an_operations_own_time() {
        use std::time::Duration;
        let mut table = SpanTable::new(TraceId::random(), None);
        let mut t = Timeline::default();
        let mut boot = table.begin(SpanKind::Boot, "boot a", Some("a"), true);
        let mut first = table.begin(SpanKind::Operation, "succeed", Some("a"), false);
        first.set_attr(attr::MESSAGE, "must succeed: first".into());
        let mut slow = first.clone();
        slow.set_attr(attr::MESSAGE, "must succeed: slow".into());
        // the boot takes 3 s; the first command starts 1 s in and ends 0.5 s after it
        first.start = boot.start + Duration::from_secs(1);
        boot.end = Some(boot.start + Duration::from_secs(3));
        first.end = Some(boot.start + Duration::from_millis(3500));
        slow.start = boot.start + Duration::from_secs(4);
        slow.end = Some(slow.start + Duration::from_secs(1));
        for r in [&boot, &first, &slow] {
            t.event(&Event::SpanEnd(r));
        }
        let lines = lines(&t);
        assert!(
            lines[4].ends_with("    1.00 s  a: must succeed: slow"),
            "{lines:?}"
        );
        assert!(
            lines[5].ends_with("0.50 s  a: must succeed: first (and 2.00 s waiting for the boot)"),
            "{lines:?}"
        );
    }
}
