//! Exporting spans over OTLP/HTTP (protobuf), configured by the standard environment
//! variables. A background thread batches finished spans and posts them; `flush` sends what
//! is pending and waits (bounded) for the collector's answer. Nothing here ever fails a
//! test: an unreachable collector costs one warning.
//!
//! Honoured: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`/v1/traces` appended), `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` (ms), `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`
//! (only `http/protobuf`), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`. Plain `http://` endpoints only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use super::{otlp, AttrValue, SpanRecord};

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// `host:port` of the collector.
    pub authority: String,
    /// The request path, e.g. `/v1/traces`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub resource: Vec<(String, AttrValue)>,
}

/// Reading the settings: `Ok(None)` when exporting is off, `Err` for settings that cannot
/// work (the caller warns and exports nothing); warnings for settings that were ignored.
pub fn settings_from_env(
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Option<OtlpSettings>, String> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if get("OTEL_TRACES_EXPORTER").is_some_and(|v| !v.split(',').any(|e| e.trim() == "otlp")) {
        return Ok(None);
    }
    let url = match (
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(traces), _) => traces.to_string(),
        (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
        (None, None) => return Ok(None),
    };
    let (authority, path) = split_http_url(&url)?;
    let either = |specific: &str, general: &str| get(specific).or_else(|| get(general));
    if let Some(p) = either(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) {
        if p != "http/protobuf" {
            warnings.push(format!(
                "OTLP protocol {p:?} is not supported; exporting with http/protobuf"
            ));
        }
    }
    let headers = either(
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    )
    .map(parse_pairs)
    .transpose()
    .map_err(|e| format!("OTEL_EXPORTER_OTLP_HEADERS: {e}"))?
    .unwrap_or_default();
    let timeout = match either(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ) {
        Some(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|_| format!("OTEL_EXPORTER_OTLP_TIMEOUT: not milliseconds: {ms:?}"))?,
        ),
        None => Duration::from_secs(10),
    };
    let mut resource: Vec<(String, AttrValue)> = get("OTEL_RESOURCE_ATTRIBUTES")
        .map(parse_pairs)
        .transpose()
        .map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, AttrValue::Str(v)))
        .collect();
    // OTEL_SERVICE_NAME wins over a service.name among the resource attributes.
    let service = get("OTEL_SERVICE_NAME").map(str::to_string).or_else(|| {
        resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.to_string())
    });
    resource.retain(|(k, _)| k != "service.name");
    resource.insert(
        0,
        (
            "service.name".to_string(),
            AttrValue::Str(service.unwrap_or_else(|| "nixos-test-ng".to_string())),
        ),
    );
    for (k, v) in [
        ("telemetry.sdk.name", "nixos-test-ng"),
        ("telemetry.sdk.language", "rust"),
        ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ] {
        resource.push((k.to_string(), AttrValue::Str(v.to_string())));
    }
    Ok(Some(OtlpSettings {
        authority,
        path,
        headers,
        timeout,
        resource,
    }))
}

fn split_http_url(url: &str) -> Result<(String, String), String> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(format!(
            "OTLP endpoint {url}: https is not supported; export to an http:// collector \
             (e.g. a local OpenTelemetry Collector that forwards over TLS)"
        ));
    } else {
        return Err(format!("OTLP endpoint {url:?} is not an http:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("OTLP endpoint {url:?} names no host"));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// `k=v,k2=v2` with percent-encoded values (the W3C baggage format the variables use).
fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            Ok((percent_decode(k.trim()), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

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

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn settings(pairs: &[(&str, &str)]) -> Result<Option<OtlpSettings>, String> {
        settings_from_env(&env(pairs), &mut Vec::new())
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318");
        assert_eq!(settings(&[base, ("OTEL_SDK_DISABLED", "true")]), Ok(None));
        assert_eq!(
            settings(&[base, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
        assert!(settings(&[base, ("OTEL_TRACES_EXPORTER", "otlp")])
            .unwrap()
            .is_some());
    }

    #[test]
    fn endpoints() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.authority.as_str(), s.path.as_str()),
            ("collector:4318", "/v1/traces")
        );
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:9/custom",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.authority.as_str(), s.path.as_str()),
            ("127.0.0.1:9", "/custom")
        );
        let s = settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://host")])
            .unwrap()
            .unwrap();
        assert_eq!((s.authority.as_str(), s.path.as_str()), ("host:80", "/"));
        let e =
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.example.com")]).unwrap_err();
        assert!(e.contains("https is not supported"), "{e}");
        assert!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://x")]).is_err());
    }

    #[test]
    fn resource_headers_and_protocol() {
        let mut warnings = Vec::new();
        let s = settings_from_env(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=a,deployment.environment=ci%20run",
                ),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s%3Dcret"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
            &mut warnings,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.resource[0],
            ("service.name".into(), AttrValue::Str("a".into()))
        );
        assert!(s.resource.contains(&(
            "deployment.environment".into(),
            AttrValue::Str("ci run".into())
        )));
        assert_eq!(s.headers, vec![("x-api-key".into(), "s=cret".into())]);
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(warnings.len(), 1);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=a"),
            ("OTEL_SERVICE_NAME", "b"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.resource[0].1, AttrValue::Str("b".into()));
        assert_eq!(
            s.resource
                .iter()
                .filter(|(k, _)| k == "service.name")
                .count(),
            1
        );
    }

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
        let s = settings(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("http://127.0.0.1:{port}/v1/traces"),
        )])
        .unwrap()
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
