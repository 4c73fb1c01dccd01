//! A parallel worker's share of a run: the one place that makes the names and paths of
//! several drivers on one host distinct when they run the same machines at once (pytest-xdist's
//! `pytest -n N`, each worker with a driver of its own).
//!
//! Everything a driver derives from a machine's name alone lives under its tmp dir (the state
//! directories `vm-state-<name>` with their QEMU and vhost-user sockets, the VLANs' switch
//! sockets `vde<n>.ctl`, the shared directory `shared-xchg`) or its output directory
//! (screenshots, copied files). A worker gets a tmp dir and an output directory of its own
//! (`<tmp>/ntng-<worker>`, `<out>/<worker>`), and its report files (`LOGFILE`,
//! JUnit, HTML) get the worker in their name (`log.xml` → `log-<worker>.xml`). MAC and IP
//! addresses need nothing: each worker's VLANs are switches of their own.

use std::path::{Path, PathBuf};

use super::Config;
use crate::error::{Error, Result};

impl Config {
    /// This run as worker `worker` (e.g. pytest-xdist's `gw0`) of several running at once.
    pub fn for_worker(mut self, worker: &str) -> Result<Config> {
        check_worker(worker)?;
        self.out_dir = self.out_dir.join(worker);
        self.junit_xml = self.junit_xml.map(|p| worker_file(&p, worker));
        self.html_report = self.html_report.map(|p| worker_file(&p, worker));
        self.reporting.xml_log = self.reporting.xml_log.map(|p| worker_file(&p, worker));
        self.worker = Some(worker.to_string());
        Ok(self)
    }
}

/// A worker's name is a single path component: letters, digits, `-`, `_` and `.`.
fn check_worker(worker: &str) -> Result<()> {
    let ok = !worker.is_empty()
        && worker != "."
        && worker != ".."
        && worker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "worker name `{worker}`: expected letters, digits, `-`, `_` or `.` (e.g. `gw0`)"
        )))
    }
}

/// The tmp dir of worker `worker` under the driver's `base` tmp dir.
pub fn worker_tmp_dir(base: &Path, worker: &str) -> PathBuf {
    base.join(format!("ntng-{worker}"))
}

/// `path` with `-<worker>` before its extension (`out/log.xml` → `out/log-gw0.xml`). A path
/// that exists and is no regular file (`LOGFILE=/dev/null`, a FIFO) stays as it is.
pub fn worker_file(path: &Path, worker: &str) -> PathBuf {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return path.to_path_buf();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{worker}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{worker}"),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Reporting;

    #[test]
    fn worker_files_get_the_worker_before_the_extension() {
        assert_eq!(
            worker_file(Path::new("out/log.xml"), "gw0"),
            PathBuf::from("out/log-gw0.xml")
        );
        assert_eq!(
            worker_file(Path::new("/x/report.html"), "gw12"),
            PathBuf::from("/x/report-gw12.html")
        );
        assert_eq!(
            worker_file(Path::new("trace"), "gw1"),
            PathBuf::from("trace-gw1")
        );
        // nixpkgs' run.nix sets LOGFILE=/dev/null: not a file to rename
        assert_eq!(
            worker_file(Path::new("/dev/null"), "gw0"),
            PathBuf::from("/dev/null")
        );
    }

    #[test]
    fn a_worker_has_its_own_output_directory_and_report_files() {
        let base = Config {
            out_dir: PathBuf::from("/o"),
            junit_xml: Some(PathBuf::from("/o/junit.xml")),
            html_report: Some(PathBuf::from("/o/report.html")),
            reporting: Reporting {
                xml_log: Some(PathBuf::from("/l/log.xml")),
                ..Reporting::default()
            },
            ..Config::default()
        };
        let (a, b) = (
            base.clone().for_worker("gw0").unwrap(),
            base.clone().for_worker("gw1").unwrap(),
        );
        assert_eq!(a.worker.as_deref(), Some("gw0"));
        assert_eq!(a.out_dir, PathBuf::from("/o/gw0"));
        assert_eq!(b.out_dir, PathBuf::from("/o/gw1"));
        assert_eq!(a.junit_xml, Some(PathBuf::from("/o/junit-gw0.xml")));
        assert_eq!(a.html_report, Some(PathBuf::from("/o/report-gw0.html")));
        assert_eq!(b.reporting.xml_log, Some(PathBuf::from("/l/log-gw1.xml")));
        assert_ne!(
            worker_tmp_dir(Path::new("/tmp"), "gw0"),
            worker_tmp_dir(Path::new("/tmp"), "gw1")
        );
        assert_eq!(base.worker, None);
    }

    #[test]
    fn a_worker_name_is_one_path_component() {
        for bad in ["", ".", "..", "a/b", "gw 0", "../x"] {
            let e = Config::default().for_worker(bad).unwrap_err().to_string();
            assert!(e.contains("worker name"), "{bad:?}: {e}");
        }
        assert!(Config::default().for_worker("gw-3_x.y").is_ok());
    }
}
