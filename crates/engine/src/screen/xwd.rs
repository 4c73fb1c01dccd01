//! X window dumps (XWD, version 7) as images: the format of `xwd -root` and of the framebuffer
//! file Xvfb keeps with `-fbdir DIR` (`DIR/Xvfb_screen0`). Total on any input: a bad or
//! truncated file is an error, never a panic.
//!
//! Layout: a header of 25 big-endian 32-bit fields (`header_size` bytes in all, the window
//! name after the fields), `ncolors` colormap entries of 12 bytes (pixel u32, red, green,
//! blue u16, flags, pad; big-endian), then `height` rows of `bytes_per_line` bytes.

use std::collections::HashMap;

use super::Image;
use crate::error::{Error, Result};

const HEADER_FIELDS: usize = 25;
const FILE_VERSION: u32 = 7;
const Z_PIXMAP: u32 = 2;
const COLOR_ENTRY: usize = 12;
/// Larger screens than this (pixels) are taken for garbage.
const MAX_PIXELS: usize = 1 << 26;

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Config(format!("not a usable XWD screen capture: {what}"))
}

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// The header fields this parser reads.
struct Header {
    header_size: usize,
    width: usize,
    height: usize,
    byte_order_msb: bool,
    bits_per_pixel: usize,
    bytes_per_line: usize,
    visual_class: u32,
    masks: [u32; 3],
    ncolors: usize,
}

fn header(data: &[u8]) -> Result<Header> {
    if data.len() < HEADER_FIELDS * 4 {
        return Err(bad(format!("truncated header ({} bytes)", data.len())));
    }
    let f = |i: usize| be32(data, i * 4);
    if f(1) != FILE_VERSION {
        return Err(bad(format!(
            "file version {} (expected {FILE_VERSION})",
            f(1)
        )));
    }
    if f(2) != Z_PIXMAP {
        return Err(bad(format!("pixmap format {} (only ZPixmap, 2)", f(2))));
    }
    let h = Header {
        header_size: f(0) as usize,
        width: f(4) as usize,
        height: f(5) as usize,
        byte_order_msb: match f(7) {
            0 => false,
            1 => true,
            other => return Err(bad(format!("byte order {other}"))),
        },
        bits_per_pixel: f(11) as usize,
        bytes_per_line: f(12) as usize,
        visual_class: f(13),
        masks: [f(14), f(15), f(16)],
        ncolors: f(19) as usize,
    };
    if h.header_size < HEADER_FIELDS * 4 {
        return Err(bad(format!("header size {}", h.header_size)));
    }
    if h.width == 0 || h.height == 0 || h.width.saturating_mul(h.height) > MAX_PIXELS {
        return Err(bad(format!("size {}x{}", h.width, h.height)));
    }
    if ![8, 16, 24, 32].contains(&h.bits_per_pixel) {
        return Err(bad(format!(
            "{} bits per pixel (8, 16, 24 or 32 are read)",
            h.bits_per_pixel
        )));
    }
    if h.bytes_per_line < h.width * h.bits_per_pixel / 8 {
        return Err(bad(format!(
            "{} bytes per line for {} pixels of {} bits",
            h.bytes_per_line, h.width, h.bits_per_pixel
        )));
    }
    Ok(h)
}

/// How a pixel value becomes RGB.
enum Colors {
    /// TrueColor and DirectColor: each channel's mask.
    Masks([u32; 3]),
    /// The gray and palette visuals: the colormap.
    Map(HashMap<u32, [u8; 3]>),
}

fn colors(h: &Header, cmap: &[u8]) -> Result<Colors> {
    match h.visual_class {
        4 | 5 => {
            if h.masks.contains(&0) {
                return Err(bad("a colour mask is 0"));
            }
            Ok(Colors::Masks(h.masks))
        }
        0..=3 => Ok(Colors::Map(
            cmap.chunks_exact(COLOR_ENTRY)
                .map(|e| (be32(e, 0), [e[4], e[6], e[8]]))
                .collect(),
        )),
        other => Err(bad(format!("visual class {other}"))),
    }
}

/// A channel's value under `mask`, scaled to 8 bits.
fn channel(pixel: u32, mask: u32) -> u8 {
    let bits = mask.count_ones();
    let v = (pixel & mask) >> mask.trailing_zeros();
    if bits >= 8 {
        (v >> (bits - 8)) as u8
    } else {
        (v * 255 / ((1u32 << bits) - 1)) as u8
    }
}

/// Parses an XWD file into RGB.
pub fn parse_xwd(data: &[u8]) -> Result<Image> {
    let h = header(data)?;
    let cmap_len = h
        .ncolors
        .checked_mul(COLOR_ENTRY)
        .ok_or_else(|| bad("colormap size"))?;
    let pixels_at = h
        .header_size
        .checked_add(cmap_len)
        .ok_or_else(|| bad("colormap size"))?;
    let pixels_len = h
        .bytes_per_line
        .checked_mul(h.height)
        .ok_or_else(|| bad("image size"))?;
    let end = pixels_at
        .checked_add(pixels_len)
        .ok_or_else(|| bad("image size"))?;
    if data.len() < end {
        return Err(bad(format!(
            "truncated: {} bytes, {end} expected for {}x{}",
            data.len(),
            h.width,
            h.height
        )));
    }
    let colors = colors(&h, &data[h.header_size..pixels_at])?;
    let bytes = h.bits_per_pixel / 8;
    let mut rgb = Vec::with_capacity(h.width * h.height * 3);
    for row in data[pixels_at..end].chunks_exact(h.bytes_per_line) {
        for px in row[..h.width * bytes].chunks_exact(bytes) {
            let value = if h.byte_order_msb {
                px.iter().fold(0u32, |v, &b| (v << 8) | b as u32)
            } else {
                px.iter().rev().fold(0u32, |v, &b| (v << 8) | b as u32)
            };
            match &colors {
                Colors::Masks(m) => {
                    rgb.extend(m.iter().map(|&mask| channel(value, mask)));
                }
                Colors::Map(map) => {
                    let c = map.get(&value).ok_or_else(|| {
                        bad(format!("pixel value {value} is not in the colormap"))
                    })?;
                    rgb.extend_from_slice(c);
                }
            }
        }
    }
    Ok(Image {
        width: h.width,
        height: h.height,
        rgb,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An XWD file as Xvfb writes it for depth 24: 32 bits per pixel, LSB first, TrueColor,
    /// `ncolors` colormap entries that TrueColor does not use, `pad` bytes ending each row.
    pub(crate) fn xwd_true_color(width: u32, height: u32, pad: u32, pixels: &[[u8; 3]]) -> Vec<u8> {
        let name = b"Xvfb main window\0";
        let header_size = 100 + name.len() as u32;
        let bpl = width * 4 + pad;
        let ncolors = 2;
        let fields: [u32; 25] = [
            header_size,
            7,
            2,
            24,
            width,
            height,
            0,
            0,
            32,
            0,
            32,
            32,
            bpl,
            4,
            0xff0000,
            0xff00,
            0xff,
            8,
            256,
            ncolors,
            width,
            height,
            0,
            0,
            0,
        ];
        let mut data: Vec<u8> = fields.iter().flat_map(|f| f.to_be_bytes()).collect();
        data.extend_from_slice(name);
        data.extend(std::iter::repeat_n(0xAA, 12 * ncolors as usize));
        for y in 0..height {
            for x in 0..width {
                let [r, g, b] = pixels[(y * width + x) as usize];
                data.extend_from_slice(&[b, g, r, 0]);
            }
            data.extend(std::iter::repeat_n(0xEE, pad as usize));
        }
        data
    }

    #[test]
    fn true_color_lsb_with_padded_rows() {
        let px = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]];
        let img = parse_xwd(&xwd_true_color(2, 2, 4, &px)).unwrap();
        assert_eq!((img.width, img.height), (2, 2));
        assert_eq!(img.rgb, px.concat());
    }

    #[test]
    fn sixteen_bit_msb_and_a_palette() {
        // 16 bits, 5-6-5, MSB first
        let mut data = xwd_true_color(1, 1, 0, &[[0, 0, 0]]);
        let set = |d: &mut Vec<u8>, i: usize, v: u32| {
            d[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes())
        };
        let at = data.len() - 4;
        data.truncate(at + 2);
        set(&mut data, 7, 1);
        set(&mut data, 11, 16);
        set(&mut data, 12, 2);
        set(&mut data, 14, 0xf800);
        set(&mut data, 15, 0x07e0);
        set(&mut data, 16, 0x001f);
        data[at..].copy_from_slice(&[0xf8, 0x1f]); // red full, green 0, blue full
        assert_eq!(parse_xwd(&data).unwrap().rgb, vec![255, 0, 255]);

        // 8 bits, PseudoColor: pixel 7 is in the colormap
        let mut data = xwd_true_color(1, 1, 0, &[[0, 0, 0]]);
        let at = data.len() - 4;
        data.truncate(at + 1);
        set(&mut data, 11, 8);
        set(&mut data, 12, 1);
        set(&mut data, 13, 3);
        let cmap = 100 + 17;
        let entry = [0, 0, 0, 7, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 7, 0];
        data[cmap..cmap + 12].copy_from_slice(&entry);
        data[at] = 7;
        assert_eq!(parse_xwd(&data).unwrap().rgb, vec![0x12, 0x56, 0x9a]);
        data[at] = 8;
        let e = parse_xwd(&data).unwrap_err().to_string();
        assert!(e.contains("pixel value 8 is not in the colormap"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_input_are_errors() {
        let good = xwd_true_color(3, 2, 0, &[[1, 2, 3]; 6]);
        assert!(parse_xwd(&good).is_ok());
        for len in [0, 1, 99, 100, 116, 117 + 24, good.len() - 1] {
            let e = parse_xwd(&good[..len]).unwrap_err().to_string();
            assert!(e.contains("truncated"), "{len}: {e}");
        }
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(parse_xwd(&garbage).is_err());
        assert!(parse_xwd(b"P6\n1 1\n255\n\0\0\0").is_err());

        let set = |i: usize, v: u32| {
            let mut d = good.clone();
            d[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
            parse_xwd(&d).unwrap_err().to_string()
        };
        assert!(set(1, 6).contains("file version 6"));
        assert!(set(2, 1).contains("pixmap format 1"));
        assert!(set(4, 0).contains("size 0x2"));
        assert!(set(4, u32::MAX).contains("size"));
        assert!(set(7, 2).contains("byte order 2"));
        assert!(set(11, 1).contains("1 bits per pixel"));
        assert!(set(12, 4).contains("bytes per line"));
        assert!(set(12, u32::MAX).contains("truncated"));
        assert!(set(13, 9).contains("visual class 9"));
        assert!(set(14, 0).contains("mask is 0"));
        assert!(set(19, u32::MAX).contains("truncated") || set(19, u32::MAX).contains("size"));
        assert!(set(0, u32::MAX).contains("truncated") || set(0, u32::MAX).contains("size"));
        assert!(set(0, 4).contains("header size 4"));
    }
}
