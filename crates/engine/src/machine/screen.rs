//! Screens: screenshots and OCR (upstream's `screenshot`, `get_screen_text`,
//! `get_screen_text_variants`, `wait_for_text`), over a backend's [`crate::backend::Screen`]
//! or, on a backend without a display device that offers it, over the guest's own X display
//! captured from inside the guest (`screen/guest.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{ExecOptions, Machine};
use crate::backend::{Capability, Screen};
use crate::config::Transport;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::screen::guest::{self, Capture};
use crate::screen::{self, ocr, xwd};
use crate::transport::shell::shell_quote;

/// One OCR pass of three images must not take longer than this.
const OCR_TIMEOUT: Duration = Duration::from_secs(120);

/// Copying a guest's capture to the host must not take longer than this.
const CAPTURE_COPY_TIMEOUT: Duration = Duration::from_secs(120);

static DUMPS: AtomicU64 = AtomicU64::new(0);

/// Where a machine's screen comes from.
enum Source<'a> {
    /// The backend's display device.
    Device(&'a dyn Screen),
    /// The guest's X display, captured inside the guest and copied out through its agent.
    Guest,
}

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

    /// The machine's screen, or `Unsupported` for `operation`. The guest capture needs the
    /// agent (its copy): not with `NIXOS_TEST_NG_TRANSPORT=backdoor`.
    fn source(&self, operation: &str) -> Result<Source<'_>> {
        if let Some(screen) = self.backend.screen() {
            return Ok(Source::Device(screen));
        }
        if self.backend.captures_guest_display() && self.info.transport != Transport::Backdoor {
            return Ok(Source::Guest);
        }
        Err(self.unsupported(operation, Capability::Screen))
    }

    /// The guest's X display (`screen/guest.rs`): found and captured in the guest, the XWD
    /// file copied into the state directory through the agent, read, and removed.
    fn guest_capture(&self, operation: &str) -> Result<screen::Image> {
        if !self.via_agent()? {
            return Err(self.screen_error(Error::Config(
                "capturing the guest's X display needs the guest agent, which this machine has not connected"
                    .to_string(),
            )));
        }
        let (status, out) = self.execute_unhooked(guest::CAPTURE, ExecOptions::default())?;
        let answer = guest::parse(&out).filter(|_| status == 0);
        let (path, temporary) = match answer {
            Some(Capture::File(p)) => (p, false),
            Some(Capture::Temporary(p)) => (p, true),
            Some(Capture::Missing(reason)) => {
                return Err(Error::Unsupported {
                    machine: self.name().to_string(),
                    operation: operation.to_string(),
                    backend: self.kind().backend_name().to_string(),
                    reason,
                })
            }
            Some(Capture::Failed(why)) => {
                return Err(self.screen_error(Error::Config(format!(
                    "capturing the guest's X display {}: {why}",
                    guest::DISPLAY
                ))))
            }
            None => {
                return Err(self.screen_error(Error::Config(format!(
                    "capturing the guest's X display: no answer from the guest (exit status {status}): {out}"
                ))))
            }
        };
        let n = DUMPS.fetch_add(1, Ordering::Relaxed);
        let name = format!("screen-{n}.xwd");
        let copied = self.shell.get_tree(
            &self.info,
            &self.console,
            &path,
            &self.info().state_dir,
            &name,
            Deadline::after(Some(CAPTURE_COPY_TIMEOUT)),
        );
        if temporary {
            let _ = self.execute_unhooked(
                &format!("rm -f -- {}", shell_quote(&path)),
                ExecOptions::default(),
            );
        }
        copied?;
        let host = self.info().state_dir.join(&name);
        let data = std::fs::read(&host);
        let _ = std::fs::remove_file(&host);
        let data = data
            .map_err(|e| Error::io(format!("reading the screen capture {}", host.display()), e))?;
        xwd::parse_xwd(&data).map_err(|e| self.screen_error(e))
    }

    /// A fresh PPM screen dump in the state directory, parsed.
    fn screen_image(&self, operation: &str) -> Result<(PathBuf, screen::Image)> {
        let n = DUMPS.fetch_add(1, Ordering::Relaxed);
        let path = self.info().state_dir.join(format!("screen-{n}.ppm"));
        match self.source(operation)? {
            Source::Device(screen) => screen.screen_dump(&self.info, &path, "ppm")?,
            Source::Guest => {
                let image = self.guest_capture(operation)?;
                image.write_ppm(&path)?;
                return Ok((path, image));
            }
        }
        let data = std::fs::read(&path)
            .map_err(|e| Error::io(format!("reading the screen dump {}", path.display()), e))?;
        let image = screen::parse_ppm(&data).map_err(|e| self.screen_error(e))?;
        Ok((path, image))
    }

    /// Saves the screen as PNG (see [`screenshot_path`]); returns the file written.
    pub fn screenshot(&self, filename: &str) -> Result<PathBuf> {
        let source = self.source("screenshot")?;
        let path = screenshot_path(&self.info().out_dir, filename);
        let block = self.op(
            "screenshot",
            &format!("making screenshot {}", path.display()),
        );
        let written = match source {
            Source::Guest => self
                .guest_capture("screenshot")
                .and_then(|image| image.write_png(&path).map_err(|e| self.screen_error(e))),
            Source::Device(screen) => self.device_screenshot(screen, &path),
        };
        if let Err(e) = written {
            return Err(block.fail_with(e));
        }
        self.info().logger.screenshot(self.name(), &path);
        block.finish();
        Ok(path)
    }

    /// A display device's screen as PNG at `path`.
    fn device_screenshot(&self, screen: &dyn Screen, path: &Path) -> Result<()> {
        // QEMU 7.1 and later write PNG themselves; older ones only PPM.
        if screen.screen_dump(&self.info, path, "png").is_err() {
            let (ppm, image) = self.screen_image("screenshot")?;
            let written = image.write_png(path);
            let _ = std::fs::remove_file(&ppm);
            written.map_err(|e| self.screen_error(e))?;
        }
        Ok(())
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
        self.source("wait_for_text")?;
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
