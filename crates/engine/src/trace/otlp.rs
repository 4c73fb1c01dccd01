//! OTLP/protobuf encoding of finished spans: an `ExportTraceServiceRequest` as
//! `opentelemetry/proto/collector/trace/v1/trace_service.proto` defines it. Only the fields
//! the driver fills are written; the encoding is checked against the official Python
//! `opentelemetry-proto` decoder in the test suite.

use super::{unix_nanos, AttrValue, SpanRecord, SpanStatus};

/// The wire encoder: fields as (number, wire type) tags, varints and length prefixes.
#[derive(Default)]
struct Buf(Vec<u8>);

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

impl Buf {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.tag(field, LEN);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn uint(&mut self, field: u32, v: u64) {
        self.tag(field, VARINT);
        self.varint(v);
    }

    fn message(&mut self, field: u32, fill: impl FnOnce(&mut Buf)) {
        let mut inner = Buf::default();
        fill(&mut inner);
        self.bytes(field, &inner.0);
    }
}

// AnyValue
fn any_value(b: &mut Buf, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => b.string(1, s),
        AttrValue::Bool(x) => b.uint(2, u64::from(*x)),
        AttrValue::Int(x) => b.uint(3, *x as u64),
    }
}

// KeyValue
fn key_value(b: &mut Buf, field: u32, key: &str, value: &AttrValue) {
    b.message(field, |kv| {
        kv.string(1, key);
        kv.message(2, |v| any_value(v, value));
    });
}

const SPAN_KIND_INTERNAL: u64 = 1;
const STATUS_OK: u64 = 1;
const STATUS_ERROR: u64 = 2;

// Span
fn span(b: &mut Buf, r: &SpanRecord) {
    b.bytes(1, &r.trace.0);
    b.bytes(2, &r.id.0);
    if let Some(p) = r.parent {
        b.bytes(4, &p.0);
    }
    b.string(5, &r.name);
    b.uint(6, SPAN_KIND_INTERNAL);
    b.fixed64(7, unix_nanos(r.start));
    let end = unix_nanos(r.end.unwrap_or(r.start));
    b.fixed64(8, end);
    for (k, v) in &r.attrs {
        key_value(b, 9, k, v);
    }
    if let SpanStatus::Error(message) = &r.status {
        // The semantic conventions' record of an exception: an event beside the status.
        b.message(11, |e| {
            e.fixed64(1, end);
            e.string(2, "exception");
            key_value(e, 3, "exception.message", &AttrValue::Str(message.clone()));
        });
    }
    match &r.status {
        SpanStatus::Unset => {}
        SpanStatus::Ok => b.message(15, |s| s.uint(3, STATUS_OK)),
        SpanStatus::Error(message) => b.message(15, |s| {
            s.string(2, message);
            s.uint(3, STATUS_ERROR);
        }),
    }
}

/// The body of one export request: `spans` under one resource and one scope.
pub fn encode_request(
    resource: &[(String, AttrValue)],
    scope_version: &str,
    spans: &[SpanRecord],
) -> Vec<u8> {
    let mut b = Buf::default();
    b.message(1, |rs| {
        rs.message(1, |res| {
            for (k, v) in resource {
                key_value(res, 1, k, v);
            }
        });
        rs.message(2, |ss| {
            ss.message(1, |scope| {
                scope.string(1, "nixos-test-ng");
                scope.string(2, scope_version);
            });
            for r in spans {
                ss.message(2, |s| span(s, r));
            }
        });
    });
    b.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for (v, want) in [
            (0u64, vec![0u8]),
            (1, vec![1]),
            (127, vec![127]),
            (128, vec![0x80, 1]),
            (300, vec![0xac, 0x02]),
        ] {
            let mut b = Buf::default();
            b.varint(v);
            assert_eq!(b.0, want, "{v}");
        }
        // Negative int64 values take ten bytes, as protobuf's two's complement encoding.
        let mut b = Buf::default();
        any_value(&mut b, &AttrValue::Int(-1));
        assert_eq!(b.0.len(), 1 + 10);
    }

    #[test]
    fn strings_are_length_prefixed() {
        let mut b = Buf::default();
        b.string(5, "abc");
        assert_eq!(b.0, vec![5 << 3 | 2, 3, b'a', b'b', b'c']);
    }
}
