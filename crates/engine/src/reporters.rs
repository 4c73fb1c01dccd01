//! The edge where a run's reporters are chosen, built and read back; the only module that
//! names them all. [`terminal_logger`] makes the logger with the terminal and the report's
//! timeline; [`Reports::start_run`] adds what the run's configuration asks for
//! ([`Reporting`]: the XML log of `LOGFILE`, the OTLP exporter of the `OTEL_*` variables) and
//! JUnit, and begins the run's span (a child of `TRACEPARENT`'s). At the end [`Reports`]
//! writes the JUnit file and the HTML report and gives the timing summary.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::config::Reporting;
use crate::event::Fanout;
use crate::junit::JunitCollector;
use crate::log::Logger;
use crate::report::Timeline;
use crate::terminal::TerminalReporter;
use crate::trace::export::OtlpReporter;
use crate::xml_log::XmlLogReporter;

/// The reporters the end of a run reads back.
pub struct Reports {
    timeline: Arc<Mutex<Timeline>>,
    junit: Mutex<Option<Arc<Mutex<JunitCollector>>>>,
}

/// A logger writing upstream's format to stderr (coloured when `color`, with a boot status
/// line when `progress`) and recording the timeline of the HTML report and the timing summary.
pub fn terminal_logger(color: bool, progress: bool) -> (Logger, Reports) {
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let logger = Logger::new(Fanout::new(vec![
        Box::new(TerminalReporter::stderr(color, progress)),
        Box::new(timeline.clone()),
    ]));
    let reports = Reports {
        timeline,
        junit: Mutex::new(None),
    };
    (logger, reports)
}

impl Reports {
    /// Adds the reporters `reporting` asks for, and JUnit (one test case per subtest) when
    /// `junit`, then begins the run's span `name`. Settings that cannot work are warnings,
    /// printed before the new reporters see anything.
    pub fn start_run(&self, logger: &Logger, reporting: &Reporting, name: &str, junit: bool) {
        for w in &reporting.warnings {
            logger.warning(w);
        }
        if let Some(path) = &reporting.xml_log {
            match XmlLogReporter::create(path) {
                Ok(x) => logger.add_reporter(Box::new(x)),
                Err(e) => logger.warning(&format!("LOGFILE {}: {e}; no XML log", path.display())),
            }
        }
        if let Some(settings) = &reporting.otlp {
            logger.add_reporter(Box::new(OtlpReporter::start(settings.clone())));
        }
        if junit {
            let collector = Arc::new(Mutex::new(JunitCollector::new()));
            logger.add_reporter(Box::new(collector.clone()));
            *self.junit.lock().unwrap() = Some(collector);
        }
        logger.start_run(name, reporting.parent, reporting.otlp.is_some());
    }

    /// Writes the JUnit XML file, if JUnit was asked for.
    pub fn write_junit(&self, path: &Path) -> std::io::Result<()> {
        match &*self.junit.lock().unwrap() {
            Some(j) => j.lock().unwrap().write(path),
            None => Ok(()),
        }
    }

    /// The timing summary of the run so far (see [`crate::report::summary`]).
    pub fn timing_summary(&self) -> Vec<String> {
        crate::report::summary::lines(&self.timeline.lock().unwrap())
    }

    /// Writes the HTML report of the run `logger` logged, with each machine's console log.
    pub fn write_html_report(
        &self,
        logger: &Logger,
        path: &Path,
        title: &str,
        consoles: &[(String, String)],
    ) -> std::io::Result<()> {
        let open = logger.open_spans();
        let html =
            crate::report::html::render(&self.timeline.lock().unwrap(), &open, title, consoles);
        std::fs::write(path, html)
    }
}
