//! OCR through `tesseract`, one process per image, all at once, stopping early.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};
use crate::process::{self, ChildProcess};

/// The OCR program, looked up on PATH.
pub const TESSERACT: &str = "tesseract";

/// Whether `program` is an executable on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            std::fs::metadata(&p).is_ok_and(|m| m.is_file() && is_executable(&m))
        })
    })
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

/// Upstream's command, except `--oem 1` (the LSTM engine) instead of `--oem 2` (legacy plus
/// LSTM): distributions' language data (Debian's `tesseract-ocr-eng`) often lack the legacy
/// model, and `--oem 2` then fails outright.
fn tesseract(image: &Path) -> Command {
    let mut cmd = Command::new(TESSERACT);
    cmd.arg(image)
        .args([
            "-",
            "--oem",
            "1",
            "-c",
            "debug_file=/dev/null",
            "--psm",
            "11",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads the text of every image, all in parallel. `on_text(index, text)` sees each result as
/// it comes (in completion order) and returns true to stop: the other processes are killed
/// and their entries stay `None`. Fails when OCR is not installed, a process fails, or the
/// deadline passes.
pub fn read_texts(
    images: &[PathBuf],
    deadline: Deadline,
    on_text: &mut dyn FnMut(usize, &str) -> Result<bool>,
) -> Result<Vec<Option<String>>> {
    if !on_path(TESSERACT) {
        return Err(Error::Config(format!(
            "OCR requested but `{TESSERACT}` is not available (install tesseract-ocr)"
        )));
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut running: Vec<Arc<ChildProcess>> = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let child = Arc::new(
            process::spawn(tesseract(image))
                .map_err(|e| Error::Config(format!("cannot run `{TESSERACT}`: {e}")))?,
        );
        let (stdout, stderr) = (child.take_stdout(), child.take_stderr());
        let (tx, waited) = (tx.clone(), child.clone());
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut err = String::new();
            if let Some(mut s) = stdout {
                let _ = s.read_to_string(&mut text);
            }
            if let Some(mut s) = stderr {
                let _ = s.read_to_string(&mut err);
            }
            let status = waited.wait(Deadline::NEVER);
            let _ = tx.send((i, status, text, err));
        });
        running.push(child);
    }
    drop(tx);
    let kill_all = |running: &[Arc<ChildProcess>]| running.iter().for_each(|c| c.kill());
    let mut texts = vec![None; images.len()];
    let mut pending = images.len();
    while pending > 0 {
        if let Err(e) = interrupt::check() {
            kill_all(&running);
            return Err(e);
        }
        if deadline.expired() {
            kill_all(&running);
            return Err(Error::Config("OCR did not finish in time".to_string()));
        }
        let Ok((i, status, text, err)) =
            rx.recv_timeout(deadline.slice().min(Duration::from_millis(200)))
        else {
            continue;
        };
        pending -= 1;
        match status {
            Some(s) if s.success() => {}
            other => {
                kill_all(&running);
                let code = other.and_then(|s| s.code()).unwrap_or(-1);
                let detail = err.trim();
                return Err(Error::Config(format!(
                    "OCR failed with exit code {code}{}{detail}",
                    if detail.is_empty() { "" } else { ": " }
                )));
            }
        }
        let stop = on_text(i, &text);
        texts[i] = Some(text);
        if stop? {
            kill_all(&running);
            break;
        }
    }
    Ok(texts)
}
