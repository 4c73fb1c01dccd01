//! Screens: screenshots and OCR (upstream's `screenshot`, `get_screen_text`,
//! `get_screen_text_variants`, `wait_for_text`), over a backend's [`crate::backend::Screen`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Machine;
use crate::backend::Capability;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::screen::{self, ocr};

/// One OCR pass of three images must not take longer than this.
const OCR_TIMEOUT: Duration = Duration::from_secs(120);

static DUMPS: AtomicU64 = AtomicU64::new(0);

/// Upstream's file name rules: `.png` appended when the name has no `.`, and relative to the
/// output directory when it has no `/`.
pub fn screenshot_path(out_dir: &Path, filename: &str) -> PathBuf {
    let name = if filename.contains('.') {
        filename.to_string()
    } else {
        format!("{filename}.png")
    };
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        out_dir.join(name)
    }
}

impl Machine {
    /// Errors of the screen code as errors of this machine (`MachineError` in Python).
    fn screen_error(&self, e: Error) -> Error {
        match e {
            Error::Config(message) => Error::InvalidState {
                machine: self.name().to_string(),
                message,
            },
            other => other,
        }
    }

    /// A dump of the primary display into `path` (`ppm` or `png`).
    fn screen_dump(&self, operation: &str, path: &Path, format: &str) -> Result<()> {
        let screen = self.require(operation, Capability::Screen, self.backend.screen())?;
        screen.screen_dump(&self.info, path, format)
    }

    /// A fresh PPM screen dump in the state directory, parsed.
    fn screen_image(&self, operation: &str) -> Result<(PathBuf, screen::Image)> {
        let n = DUMPS.fetch_add(1, Ordering::Relaxed);
        let path = self.info().state_dir.join(format!("screen-{n}.ppm"));
        self.screen_dump(operation, &path, "ppm")?;
        let data = std::fs::read(&path)
            .map_err(|e| Error::io(format!("reading the screen dump {}", path.display()), e))?;
        let image = screen::parse_ppm(&data).map_err(|e| self.screen_error(e))?;
        Ok((path, image))
    }

    /// Saves the screen as PNG (see [`screenshot_path`]); returns the file written.
    pub fn screenshot(&self, filename: &str) -> Result<PathBuf> {
        self.require("screenshot", Capability::Screen, self.backend.screen())?;
        let path = screenshot_path(&self.info().out_dir, filename);
        let block = self.op(
            "screenshot",
            &format!("making screenshot {}", path.display()),
        );
        // QEMU 7.1 and later write PNG themselves; older ones only PPM.
        if self.screen_dump("screenshot", &path, "png").is_err() {
            let (ppm, image) = self.screen_image("screenshot")?;
            let written = image.write_png(&path);
            let _ = std::fs::remove_file(&ppm);
            written.map_err(|e| self.screen_error(e))?;
        }
        self.info().logger.screenshot(self.name(), &path);
        block.finish();
        Ok(path)
    }

    /// OCR over the screen's variants; `on_text` as in [`ocr::read_texts`].
    fn ocr_screen(
        &self,
        operation: &str,
        variants: bool,
        on_text: &mut dyn FnMut(usize, &str) -> Result<bool>,
    ) -> Result<Vec<Option<String>>> {
        let (ppm, image) = self.screen_image(operation)?;
        let files = if variants {
            screen::variant_files(&ppm, &image)
        } else {
            Ok(vec![ppm.clone()])
        };
        let result = files.and_then(|files| {
            let r = ocr::read_texts(&files, Deadline::after(Some(OCR_TIMEOUT)), on_text);
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
            r
        });
        let _ = std::fs::remove_file(&ppm);
        result.map_err(|e| self.screen_error(e))
    }

    /// The screen's text, by OCR of the raw screen.
    pub fn get_screen_text(&self) -> Result<String> {
        let texts = self.ocr_screen("get_screen_text", false, &mut |_, _| Ok(false))?;
        Ok(texts.into_iter().flatten().next().unwrap_or_default())
    }

    /// The screen's text by OCR of the raw screen and of two processed variants (in
    /// parallel), in that order.
    pub fn get_screen_text_variants(&self) -> Result<Vec<String>> {
        let texts = self.ocr_screen("get_screen_text_variants", true, &mut |_, _| Ok(false))?;
        Ok(texts.into_iter().flatten().collect())
    }

    /// Waits until `accept` takes the text of one of the screen's variants. Each try reads
    /// all variants in parallel and stops at the first that matches (upstream waits for all
    /// three on every try).
    pub fn wait_for_text(
        &self,
        what: &str,
        timeout: Option<Duration>,
        accept: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<()> {
        self.require("wait_for_text", Capability::Screen, self.backend.screen())?;
        let what = format!("waiting for {what} to appear on screen");
        self.wait_until("wait_for_text", &what, timeout, |last_try| {
            let mut matched = false;
            let texts = self.ocr_screen("wait_for_text", true, &mut |_, text| {
                matched = accept(text)?;
                Ok(matched)
            })?;
            if !matched && last_try {
                let shown: Vec<&str> = texts.iter().flatten().map(String::as_str).collect();
                self.log(&format!("Last OCR attempt failed. Text was: {shown:?}"));
            }
            Ok(matched.then_some(()))
        })
    }
}
