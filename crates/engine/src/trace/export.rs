//! Exporting spans over OTLP/HTTP (protobuf): the reporter that sends every finished span
//! ([`OtlpReporter`]), its background thread that batches them and posts them, and `flush`,
//! which sends what is pending and waits (bounded) for the collector's answer. Nothing here
//! ever fails a test: an unreachable collector costs one warning. The settings come from the
//! run's configuration ([`crate::config::Reporting`], the `OTEL_*` variables).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use super::{otlp, SpanRecord};
use crate::config::OtlpSettings;
use crate::event::{Event, Reporter};

/// Posts one request body; `Err` names what went wrong.
fn post(settings: &OtlpSettings, body: &[u8]) -> Result<(), String> {
    let addr = settings
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", settings.authority))?
        .next()
        .ok_or_else(|| format!("{}: no address", settings.authority))?;
    let mut stream = TcpStream::connect_timeout(&addr, settings.timeout)
        .map_err(|e| format!("connecting to {}: {e}", settings.authority))?;
    stream.set_read_timeout(Some(settings.timeout)).ok();
    stream.set_write_timeout(Some(settings.timeout)).ok();
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        settings.path,
        settings.authority,
        body.len()
    );
    for (k, v) in &settings.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("sending to {}: {e}", settings.authority))?;
    let mut answer = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("");
    match status_line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(_) => Err(format!("{} answered {status_line:?}", settings.authority)),
        None => Err(format!("{} sent no HTTP answer", settings.authority)),
    }
}

enum Message {
    Span(Box<SpanRecord>),
    Flush(Sender<()>),
}

/// How many spans go in one request at most, and how long a finished span may wait.
const BATCH: usize = 512;
const LINGER: Duration = Duration::from_secs(2);

/// The exporting thread and its queue.
pub struct Exporter {
    tx: Sender<Message>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl Exporter {
    /// Starts the exporting thread.
    pub fn start(settings: OtlpSettings) -> Exporter {
        let (tx, rx) = unbounded();
        let timeout = settings.timeout;
        let thread = std::thread::Builder::new()
            .name("ntng-otlp".into())
            .spawn(move || export_loop(&settings, &rx))
            .expect("cannot start the OTLP exporting thread");
        Exporter {
            tx,
            thread: Some(thread),
            timeout,
        }
    }

    /// Queues a finished span.
    pub fn send(&self, span: SpanRecord) {
        let _ = self.tx.send(Message::Span(Box::new(span)));
    }

    /// Sends what is queued and waits for the collector (at most the export timeout).
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = bounded(1);
        if self.tx.send(Message::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(self.timeout + Duration::from_secs(1));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.flush();
        // Closing the queue ends the thread; it is not joined past a flush that timed out.
        let (tx, _) = unbounded();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The reporter exporting every finished span, until the run is over.
pub struct OtlpReporter {
    exporter: Option<Exporter>,
}

impl OtlpReporter {
    /// Starts exporting to the collector `settings` name.
    pub fn start(settings: OtlpSettings) -> Self {
        OtlpReporter {
            exporter: Some(Exporter::start(settings)),
        }
    }
}

impl Reporter for OtlpReporter {
    fn event(&mut self, event: &Event<'_>) {
        if let (Some(x), Event::SpanEnd(record)) = (&self.exporter, event) {
            x.send((*record).clone());
        }
    }

    /// Sends what is queued, waits for the collector, and exports nothing more.
    fn finish(&mut self) {
        if let Some(x) = self.exporter.take() {
            x.flush();
        }
    }
}

fn export_loop(settings: &OtlpSettings, rx: &Receiver<Message>) {
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut oldest: Option<Instant> = None;
    let mut warned = false;
    let mut send = |batch: &mut Vec<SpanRecord>| {
        if batch.is_empty() {
            return;
        }
        let body = otlp::encode_request(&settings.resource, env!("CARGO_PKG_VERSION"), batch);
        batch.clear();
        if let Err(e) = post(settings, &body) {
            if !warned {
                eprintln!("warning: exporting spans failed (further failures are not shown): {e}");
                warned = true;
            }
        }
    };
    loop {
        let wait = oldest.map_or(LINGER, |t| LINGER.saturating_sub(t.elapsed()));
        match rx.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                oldest.get_or_insert_with(Instant::now);
                if batch.len() >= BATCH {
                    send(&mut batch);
                    oldest = None;
                }
            }
            Ok(Message::Flush(ack)) => {
                send(&mut batch);
                oldest = None;
                let _ = ack.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                oldest = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Reporting;

    #[test]
    fn exports_to_a_listening_collector_and_survives_a_dead_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = Vec::new();
            loop {
                let n = conn.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if got.len() >= i + 4 + len {
                        break;
                    }
                }
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        let endpoint = format!("http://127.0.0.1:{port}/v1/traces");
        let env = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_string(), endpoint)];
        let s = Reporting::from_env(&env.into_iter().collect())
            .otlp
            .unwrap();
        let exporter = Exporter::start(s.clone());
        let mut table = super::super::SpanTable::new(super::super::TraceId::random(), None);
        let rec = table.begin(super::super::SpanKind::Run, "run", None, false);
        exporter.send(table.end(rec.id, super::super::SpanStatus::Ok).unwrap());
        exporter.flush();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/traces HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Content-Type: application/x-protobuf"));
        // A collector that is gone: flush returns, nothing panics.
        drop(exporter);
        let dead = Exporter::start(s);
        dead.send(rec);
        dead.flush();
    }
}
