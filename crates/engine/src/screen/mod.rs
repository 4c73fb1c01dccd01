//! Screens: QEMU's screen dumps (PPM) and X window dumps ([`xwd`], captured in a guest
//! without a display device: [`guest`]) as images, PNG output, and the preprocessed variants
//! that OCR reads ([`ocr`]).

pub mod guest;
pub mod ocr;
pub mod xwd;

use std::path::Path;

use crate::error::{Error, Result};

/// An RGB image, 8 bits per channel, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// A grayscale image, 8 bits per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Gray {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

fn bad(what: &str) -> Error {
    Error::Config(format!("not a binary PPM screen dump: {what}"))
}

/// Parses a binary PPM (`P6`, maxval 255), the format of QEMU's `screendump`.
pub fn parse_ppm(data: &[u8]) -> Result<Image> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while fields.len() < 4 {
        while pos < data.len() && (data[pos].is_ascii_whitespace() || data[pos] == b'#') {
            if data[pos] == b'#' {
                while pos < data.len() && data[pos] != b'\n' {
                    pos += 1;
                }
            } else {
                pos += 1;
            }
        }
        let start = pos;
        while pos < data.len() && !data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if start == pos {
            return Err(bad("truncated header"));
        }
        fields.push(std::str::from_utf8(&data[start..pos]).map_err(|_| bad("header"))?);
    }
    if fields[0] != "P6" {
        return Err(bad("no P6 magic"));
    }
    let num = |s: &str| s.parse::<usize>().map_err(|_| bad("bad number in header"));
    let (width, height, maxval) = (num(fields[1])?, num(fields[2])?, num(fields[3])?);
    if maxval != 255 {
        return Err(bad("maxval is not 255"));
    }
    // one whitespace byte ends the header
    let body = data.get(pos + 1..).unwrap_or_default();
    let len = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| bad("image size"))?;
    if body.len() < len {
        return Err(bad("truncated pixel data"));
    }
    Ok(Image {
        width,
        height,
        rgb: body[..len].to_vec(),
    })
}

impl Image {
    /// Writes the image as PNG.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .and_then(|mut w| w.write_image_data(&self.rgb))
            .map_err(|e| Error::Config(format!("writing {}: {e}", path.display())))
    }

    /// Writes the image as a binary PPM (`P6`), as QEMU's `screendump` does.
    pub fn write_ppm(&self, path: &Path) -> Result<()> {
        let mut data = format!("P6\n{} {}\n255\n", self.width, self.height).into_bytes();
        data.extend_from_slice(&self.rgb);
        std::fs::write(path, data).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Luma (ITU-R BT.601).
    pub fn gray(&self) -> Gray {
        let pixels = self
            .rgb
            .chunks_exact(3)
            .map(|p| ((299 * p[0] as u32 + 587 * p[1] as u32 + 114 * p[2] as u32) / 1000) as u8)
            .collect();
        Gray {
            width: self.width,
            height: self.height,
            pixels,
        }
    }
}

impl Gray {
    /// Scaled up `factor` times (nearest neighbour: console fonts are pixel-exact).
    pub fn upscale(&self, factor: usize) -> Gray {
        let (w, h) = (self.width * factor, self.height * factor);
        let mut pixels = Vec::with_capacity(w * h);
        for y in 0..h {
            let row = &self.pixels[(y / factor) * self.width..][..self.width];
            for x in 0..w {
                pixels.push(row[x / factor]);
            }
        }
        Gray {
            width: w,
            height: h,
            pixels,
        }
    }

    /// Contrast stretched to the full range, then posterized to `levels` levels.
    pub fn normalize_posterize(&self, levels: u8) -> Gray {
        let lo = self.pixels.iter().copied().min().unwrap_or(0) as u32;
        let hi = self.pixels.iter().copied().max().unwrap_or(255) as u32;
        let span = (hi - lo).max(1);
        let steps = (levels.max(2) - 1) as u32;
        let pixels = self
            .pixels
            .iter()
            .map(|&p| {
                let v = (p as u32 - lo) * 255 / span;
                ((v * steps + 127) / 255 * 255 / steps) as u8
            })
            .collect();
        Gray { pixels, ..*self }
    }

    /// Black and white swapped.
    pub fn negate(&self) -> Gray {
        Gray {
            pixels: self.pixels.iter().map(|p| 255 - p).collect(),
            ..*self
        }
    }

    /// Writes a binary PGM (`P5`), which tesseract reads.
    pub fn write_pgm(&self, path: &Path) -> Result<()> {
        let mut data = format!("P5\n{} {}\n255\n", self.width, self.height).into_bytes();
        data.extend_from_slice(&self.pixels);
        std::fs::write(path, data).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

/// The images OCR reads for one screen, written beside `ppm` (`<stem>.positive.pgm`,
/// `<stem>.negative.pgm`), after the raw dump itself, as upstream's variants: the raw
/// screen, and a grayscale, enlarged, contrast-stretched and posterized one, plain and
/// negated. Upstream makes the last two with ImageMagick; these come without it.
pub fn variant_files(ppm: &Path, image: &Image) -> Result<Vec<std::path::PathBuf>> {
    let processed = image.gray().upscale(3).normalize_posterize(3);
    let positive = ppm.with_extension("positive.pgm");
    let negative = ppm.with_extension("negative.pgm");
    processed.write_pgm(&positive)?;
    processed.negate().write_pgm(&negative)?;
    Ok(vec![ppm.to_path_buf(), positive, negative])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut data = b"P6\n# a comment\n2 1\n255\n".to_vec();
        data.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
        data
    }

    #[test]
    fn ppm_parses_and_rejects() {
        let img = parse_ppm(&sample()).unwrap();
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.rgb, vec![0, 0, 0, 255, 255, 255]);
        assert!(parse_ppm(b"P3\n1 1\n255\n").is_err());
        assert!(parse_ppm(b"P6\n2 2\n255\n\0\0\0").is_err());
        assert!(parse_ppm(b"P6\n1 1\n65535\n\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn variants_are_bigger_stretched_and_negated() {
        let img = Image {
            width: 2,
            height: 1,
            rgb: vec![40, 40, 40, 200, 200, 200],
        };
        let g = img.gray().upscale(3).normalize_posterize(3);
        assert_eq!((g.width, g.height), (6, 3));
        assert_eq!(&g.pixels[..6], &[0, 0, 0, 255, 255, 255]);
        assert_eq!(g.negate().pixels[0], 255);
    }

    #[test]
    fn png_round_trip() {
        let dir = std::env::temp_dir().join(format!("ntng-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.png");
        parse_ppm(&sample()).unwrap().write_png(&path).unwrap();
        let ppm = dir.join("x.ppm");
        parse_ppm(&sample()).unwrap().write_ppm(&ppm).unwrap();
        assert_eq!(
            std::fs::read(&ppm).unwrap(),
            b"P6\n2 1\n255\n\0\0\0\xff\xff\xff"
        );
        let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (2, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod properties;
