//! The open spans of a run and who is whose parent.
//!
//! A new span's parent is the innermost open span of the same thread; a thread with none
//! (a boot thread of `start_all`, a Python thread) falls back to the innermost open run, test
//! or subtest, wherever it was opened. Boot spans are detached: they end on another thread
//! than the one that began them, so they never become anyone's implicit parent.

use std::collections::HashMap;
use std::thread::ThreadId;
use std::time::SystemTime;

use super::{AttrValue, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};

/// The open spans of one trace.
pub struct SpanTable {
    trace: TraceId,
    /// The span of whoever started the driver (`TRACEPARENT` in its environment).
    remote_parent: Option<SpanId>,
    open: HashMap<SpanId, SpanRecord>,
    /// Open spans in the order they began.
    order: Vec<SpanId>,
    threads: HashMap<ThreadId, Vec<SpanId>>,
    scopes: Vec<SpanId>,
}

fn is_scope(kind: SpanKind) -> bool {
    matches!(kind, SpanKind::Run | SpanKind::Test | SpanKind::Subtest)
}

impl SpanTable {
    /// An empty table for `trace`; top-level spans get `remote_parent` as their parent.
    pub fn new(trace: TraceId, remote_parent: Option<SpanId>) -> Self {
        SpanTable {
            trace,
            remote_parent,
            open: HashMap::new(),
            order: Vec::new(),
            threads: HashMap::new(),
            scopes: Vec::new(),
        }
    }

    /// The trace all spans belong to.
    pub fn trace(&self) -> TraceId {
        self.trace
    }

    /// The innermost open span of the calling thread, else the innermost scope.
    pub fn current(&self) -> Option<SpanId> {
        let me = std::thread::current().id();
        self.threads
            .get(&me)
            .and_then(|s| s.last())
            .or(self.scopes.last())
            .copied()
    }

    /// The span commands of the calling thread run in, for their `TRACEPARENT`: the innermost
    /// open span outside every operation (a block, subtest, test or the run), so that it
    /// changes per subtest rather than per command.
    pub fn context(&self) -> Option<SpanId> {
        let me = std::thread::current().id();
        let outside_ops = self.threads.get(&me).and_then(|stack| {
            stack
                .iter()
                .take_while(|id| {
                    self.open
                        .get(id)
                        .is_some_and(|r| r.kind != SpanKind::Operation)
                })
                .last()
        });
        outside_ops.or(self.scopes.last()).copied()
    }

    /// Opens a span under the current one. `detached` spans are not pushed on the thread's
    /// stack (they may end on another thread).
    pub fn begin(
        &mut self,
        kind: SpanKind,
        name: &str,
        machine: Option<&str>,
        detached: bool,
    ) -> SpanRecord {
        let id = SpanId::random();
        let record = SpanRecord {
            trace: self.trace,
            id,
            parent: self.current().or(self.remote_parent),
            kind,
            name: name.to_string(),
            machine: machine.map(str::to_string),
            start: SystemTime::now(),
            end: None,
            attrs: Vec::new(),
            status: SpanStatus::Unset,
        };
        if !detached {
            self.push_context(id);
        }
        if is_scope(kind) {
            self.scopes.push(id);
        }
        self.open.insert(id, record.clone());
        self.order.push(id);
        record
    }

    /// Makes `id` the calling thread's current span (until [`Self::pop_context`]).
    pub fn push_context(&mut self, id: SpanId) {
        let me = std::thread::current().id();
        self.threads.entry(me).or_default().push(id);
    }

    /// Undoes [`Self::push_context`].
    pub fn pop_context(&mut self, id: SpanId) {
        let me = std::thread::current().id();
        if let Some(stack) = self.threads.get_mut(&me) {
            stack.retain(|s| *s != id);
            if stack.is_empty() {
                self.threads.remove(&me);
            }
        }
    }

    /// Sets an attribute of an open span.
    pub fn set_attr(&mut self, id: SpanId, key: &'static str, value: AttrValue) {
        if let Some(r) = self.open.get_mut(&id) {
            r.set_attr(key, value);
        }
    }

    /// Closes a span; `None` when it is not open (closed twice).
    pub fn end(&mut self, id: SpanId, status: SpanStatus) -> Option<SpanRecord> {
        let mut record = self.open.remove(&id)?;
        record.end = Some(SystemTime::now());
        record.status = status;
        self.order.retain(|s| *s != id);
        for stack in self.threads.values_mut() {
            stack.retain(|s| *s != id);
        }
        self.threads.retain(|_, s| !s.is_empty());
        self.scopes.retain(|s| *s != id);
        Some(record)
    }

    /// Closes every open span with `status` (an interrupted run), children first.
    pub fn end_all(&mut self, status: &SpanStatus) -> Vec<SpanRecord> {
        let ids: Vec<SpanId> = self.order.iter().rev().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.end(id, status.clone()))
            .collect()
    }

    /// The open spans (for a report written while some are still open).
    pub fn open_spans(&self) -> impl Iterator<Item = &SpanRecord> {
        self.open.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SpanTable {
        SpanTable::new(TraceId::random(), None)
    }

    #[test]
    fn nesting_follows_the_thread() {
        let mut t = table();
        let run = t.begin(SpanKind::Run, "run", None, false).id;
        let sub = t.begin(SpanKind::Subtest, "s", None, false);
        assert_eq!(sub.parent, Some(run));
        let op = t.begin(SpanKind::Operation, "succeed", Some("m"), false);
        assert_eq!(op.parent, Some(sub.id));
        t.end(op.id, SpanStatus::Ok).unwrap();
        let op2 = t.begin(SpanKind::Operation, "fail", Some("m"), false);
        assert_eq!(
            op2.parent,
            Some(sub.id),
            "a closed span is no longer a parent"
        );
        // Another thread sees the innermost scope, not this thread's operation.
        let other = std::thread::scope(|s| s.spawn(|| t.current()).join().unwrap());
        assert_eq!(other, Some(sub.id));
        assert!(t.end(op2.id, SpanStatus::Ok).is_some());
        assert!(t.end(op2.id, SpanStatus::Ok).is_none());
    }

    #[test]
    fn commands_run_in_the_span_outside_every_operation() {
        let mut t = table();
        let run = t.begin(SpanKind::Run, "run", None, false).id;
        assert_eq!(t.context(), Some(run));
        let sub = t.begin(SpanKind::Subtest, "s", None, false).id;
        let block = t.begin(SpanKind::Block, "user block", None, false).id;
        let op = t
            .begin(SpanKind::Operation, "wait_until_succeeds", Some("m"), false)
            .id;
        let retry = t.begin(SpanKind::Block, "retry", Some("m"), false).id;
        let inner = t.begin(SpanKind::Operation, "succeed", Some("m"), false).id;
        assert_eq!(t.context(), Some(block));
        for id in [inner, retry, op, block] {
            t.end(id, SpanStatus::Ok);
        }
        assert_eq!(t.context(), Some(sub));
        // a thread without spans of its own: the innermost scope
        let other = std::thread::scope(|s| s.spawn(|| t.context()).join().unwrap());
        assert_eq!(other, Some(sub));
    }

    #[test]
    fn detached_spans_are_not_parents() {
        let mut t = table();
        let run = t.begin(SpanKind::Run, "run", None, false).id;
        let boot = t.begin(SpanKind::Boot, "boot m", Some("m"), true);
        assert_eq!(boot.parent, Some(run));
        let op = t.begin(SpanKind::Operation, "succeed", None, false);
        assert_eq!(op.parent, Some(run));
    }

    #[test]
    fn remote_parent_and_end_all() {
        let remote = SpanId::random();
        let mut t = SpanTable::new(TraceId::random(), Some(remote));
        let run = t.begin(SpanKind::Run, "run", None, false);
        assert_eq!(run.parent, Some(remote));
        let inner = t.begin(SpanKind::Block, "b", None, false);
        let ended = t.end_all(&SpanStatus::Error("interrupted".into()));
        assert_eq!(ended.len(), 2);
        assert_eq!(ended[0].id, inner.id, "children first");
        assert!(ended
            .iter()
            .all(|r| r.status == SpanStatus::Error("interrupted".into()) && r.end.is_some()));
        assert_eq!(t.current(), None);
    }
}
