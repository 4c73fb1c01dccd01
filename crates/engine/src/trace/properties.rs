//! Property tests of `TRACEPARENT` (the environment's, and the value the driver passes on):
//! any text is a trace context or none, never a panic; what the driver writes reads back.

use proptest::prelude::*;

use super::{parse_traceparent, traceparent, SpanId, TraceId};
use crate::fuzz;

#[test]
fn traceparents_round_trip_and_anything_else_is_none_or_valid() {
    let text = prop_oneof![
        any::<String>(),
        "00-[0-9a-fA-F]{30,34}-[0-9a-f]{14,18}-[0-9a-z]{1,3}",
        "[0-9a-f-]{0,60}",
    ];
    proptest!(fuzz::config(512), |(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), text in text)| {
        let value = traceparent(TraceId(trace), SpanId(span));
        let zero = trace == [0; 16] || span == [0; 8];
        prop_assert_eq!(parse_traceparent(&value), (!zero).then_some((TraceId(trace), SpanId(span))));
        if let Some((t, s)) = parse_traceparent(&text) {
            // only a version-00 value with two ids that are not all zeros is taken
            prop_assert!(text.trim().starts_with("00-"));
            prop_assert!(t.0 != [0; 16] && s.0 != [0; 8]);
        }
    });
}
