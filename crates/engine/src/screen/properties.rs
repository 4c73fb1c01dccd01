//! Property tests of the screen dump readers (XWD from Xvfb, binary PPM from QEMU): any bytes
//! give an image or an error naming the format, never a panic, and never an image larger than
//! the input holds (a header claiming gigapixels is refused, not allocated); what the encoders
//! write reads back exactly.

use proptest::prelude::*;

use super::xwd::parse_xwd;
use super::{parse_ppm, Image};
use crate::error::Error;
use crate::fuzz;
use crate::vmm::test_dir::TestDir;

/// A header field: values the parser checks for, sizes claiming far more than follows, noise.
fn field() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(7u32),
        Just(2),
        Just(0),
        Just(1),
        prop::sample::select(vec![3u32, 4, 5, 8, 16, 24, 32, 100, 117]),
        prop::sample::select(vec![0xffu32, 0xff00, 0xff0000, 0xf800, 0x7e0, 0x1f]),
        1u32..64,
        Just(u32::MAX),
        Just(1 << 26),
        any::<u32>(),
    ]
}

/// XWD-like bytes: a header of plausible fields, then up to 4 KiB of anything.
fn xwd_like() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(field(), 25),
        proptest::collection::vec(any::<u8>(), 0..4096),
    )
        .prop_map(|(mut fields, tail)| {
            // keep the checked constants most of the time, so that later checks are reached
            if fields[3] % 4 != 0 {
                fields[1] = 7;
                fields[2] = 2;
                fields[7] %= 2;
            }
            let mut data: Vec<u8> = fields.iter().flat_map(|f| f.to_be_bytes()).collect();
            data.extend(tail);
            data
        })
}

fn is_format_error(e: &Error, what: &str) -> bool {
    matches!(e, Error::Config(m) if m.contains(what))
}

#[test]
fn xwd_bytes_give_an_image_within_the_input_or_an_error() {
    let data = prop_oneof![xwd_like(), proptest::collection::vec(any::<u8>(), 0..256)];
    proptest!(fuzz::config(512), |(data in data, cut in any::<prop::sample::Index>())| {
        for data in [&data[..], &data[..cut.index(data.len() + 1)]] {
            match parse_xwd(data) {
                Ok(img) => {
                    prop_assert_eq!(img.rgb.len(), img.width * img.height * 3);
                    // at least one byte per pixel was read from the input
                    prop_assert!(img.width * img.height <= data.len());
                }
                Err(e) => prop_assert!(is_format_error(&e, "not a usable XWD"), "{e:?}"),
            }
        }
    });
}

#[test]
fn xwd_true_color_round_trips() {
    let image = (1u32..24, 1u32..24).prop_flat_map(|(w, h)| {
        (
            Just(w),
            Just(h),
            0u32..8,
            proptest::collection::vec(any::<[u8; 3]>(), (w * h) as usize),
        )
    });
    proptest!(fuzz::config(128), |((w, h, pad, pixels) in image)| {
        let data = super::xwd::tests::xwd_true_color(w, h, pad, &pixels);
        let img = parse_xwd(&data).unwrap();
        prop_assert_eq!((img.width, img.height), (w as usize, h as usize));
        prop_assert_eq!(img.rgb, pixels.concat());
    });
}

/// PPM-like bytes: a header with any numbers (gigapixels too), comments, then anything.
fn ppm_like() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        (0u64..40).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("255".to_string()),
        "[0-9a-z#-]{0,6}",
    ];
    let sep = prop_oneof![Just(" "), Just("\n"), Just(" # c\n"), Just("")];
    (
        prop_oneof![Just("P6".to_string()), "P[0-9]"],
        proptest::collection::vec((sep.clone(), number), 3),
        proptest::option::of(sep),
        proptest::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(magic, fields, end, tail)| {
            let mut text = magic;
            for (sep, n) in fields {
                text.push_str(if sep.is_empty() { " " } else { sep });
                text.push_str(&n);
            }
            text.push_str(end.unwrap_or(""));
            let mut data = text.into_bytes();
            data.extend(tail);
            data
        })
}

#[test]
fn ppm_bytes_give_an_image_within_the_input_or_an_error() {
    let data = prop_oneof![ppm_like(), proptest::collection::vec(any::<u8>(), 0..128)];
    proptest!(fuzz::config(512), |(data in data, cut in any::<prop::sample::Index>())| {
        for data in [&data[..], &data[..cut.index(data.len() + 1)]] {
            match parse_ppm(data) {
                Ok(img) => {
                    prop_assert_eq!(img.rgb.len(), img.width * img.height * 3);
                    prop_assert!(img.rgb.len() <= data.len());
                }
                Err(e) => prop_assert!(is_format_error(&e, "not a binary PPM"), "{e:?}"),
            }
        }
    });
}

#[test]
fn ppm_round_trips() {
    let dir = TestDir::new();
    let image = (0usize..20, 0usize..20).prop_flat_map(|(width, height)| {
        proptest::collection::vec(any::<u8>(), width * height * 3).prop_map(move |rgb| Image {
            width,
            height,
            rgb,
        })
    });
    proptest!(fuzz::config(128), |(image in image)| {
        let path = dir.path().join("screen.ppm");
        image.write_ppm(&path).unwrap();
        prop_assert_eq!(parse_ppm(&std::fs::read(&path).unwrap()).unwrap(), image);
    });
}

/// The guest's capture script's answer among any other output: its last tagged line.
#[test]
fn capture_answers_are_found_among_any_output() {
    use super::guest::{parse, Capture};
    let kind = prop::sample::select(vec!["file", "temp", "missing", "failed"]);
    // a map, not a filter: rejections add up over millions of cases
    let untagged = proptest::collection::vec(
        "[^\n]{0,30}".prop_map(|l| {
            if l.starts_with("ntng-screen:") {
                format!("x{l}")
            } else {
                l
            }
        }),
        0..4,
    );
    proptest!(fuzz::config(512), |(kind in kind, rest in "[!-~][ -~]{0,30}", before in untagged.clone(), after in untagged, any_text in any::<String>())| {
        let text = [before, vec![format!("ntng-screen: {kind} {rest}")], after].concat().join("\n");
        let expected = match kind {
            "file" => Capture::File(rest),
            "temp" => Capture::Temporary(rest),
            "missing" => Capture::Missing(rest),
            _ => Capture::Failed(rest),
        };
        prop_assert_eq!(parse(&text), Some(expected));
        if parse(&any_text).is_some() {
            prop_assert!(any_text.lines().any(|l| l.starts_with("ntng-screen:")));
        }
    });
}
