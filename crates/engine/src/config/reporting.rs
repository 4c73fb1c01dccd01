//! Where a run's log and spans go besides the terminal, read from the environment once,
//! when the configuration is parsed: `LOGFILE` (upstream's XML log), the `OTEL_*` variables
//! (the OTLP exporter) and `TRACEPARENT` (the span the run is a child of).
//!
//! Honoured for OTLP: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended), `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` (ms), `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`
//! (only `http/protobuf`), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`. Plain `http://` endpoints only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::trace::{parse_traceparent, AttrValue, SpanId, TraceId};

/// The run's outputs besides the terminal, as the environment asks for them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reporting {
    /// Upstream's XML log (`LOGFILE`; unset or empty: none).
    pub xml_log: Option<PathBuf>,
    /// Where spans are exported (`OTEL_*`; `None`: not exported).
    pub otlp: Option<OtlpSettings>,
    /// The trace and span the run's span is a child of (a valid `TRACEPARENT`).
    pub parent: Option<(TraceId, SpanId)>,
    /// Settings that were ignored or cannot work, said when the run starts.
    pub warnings: Vec<String>,
}

impl Reporting {
    /// Reads `LOGFILE`, the `OTEL_*` variables and `TRACEPARENT` from `env`. Nothing here is an
    /// error: settings that cannot work turn exporting off with a warning.
    pub fn from_env(env: &HashMap<String, String>) -> Self {
        let mut warnings = Vec::new();
        let otlp = otlp_settings(env, &mut warnings).unwrap_or_else(|e| {
            warnings.push(format!("{e}; spans are not exported"));
            None
        });
        Reporting {
            // run.nix sets LOGFILE=/dev/null
            xml_log: env
                .get("LOGFILE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            otlp,
            parent: env.get("TRACEPARENT").and_then(|v| parse_traceparent(v)),
            warnings,
        }
    }
}

/// Where and how spans are exported. Its `Debug` shows the headers' names, never their
/// values (credentials).
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    /// `host:port` of the collector.
    pub authority: String,
    /// The request path, e.g. `/v1/traces`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub resource: Vec<(String, AttrValue)>,
}

/// What stands for a header's value wherever the settings are shown.
pub const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, _)| (k.as_str(), REDACTED))
            .collect();
        f.debug_struct("OtlpSettings")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("resource", &self.resource)
            .finish()
    }
}

/// Reading the settings: `Ok(None)` when exporting is off, `Err` for settings that cannot
/// work (the caller warns and exports nothing); warnings for settings that were ignored.
pub fn otlp_settings(
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
    .map(|h| parse_pairs(h, Reveal::No))
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
        .map(|r| parse_pairs(r, Reveal::Yes))
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
    // Messages show the URL without its user, password and query (credentials).
    let shown = redact_url(url);
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(format!(
            "OTLP endpoint {shown}: https is not supported; export to an http:// collector \
             (e.g. a local OpenTelemetry Collector that forwards over TLS)"
        ));
    } else {
        return Err(format!("OTLP endpoint {shown:?} is not an http:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!(
            "OTLP endpoint {shown}: credentials in the URL are not supported; \
             put them in OTEL_EXPORTER_OTLP_HEADERS"
        ));
    }
    let url = &shown;
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

/// Whether a malformed entry may be quoted in an error (never for headers: credentials).
#[derive(Clone, Copy, PartialEq)]
enum Reveal {
    Yes,
    No,
}

/// `url` as it may be shown: without a user and password, nor a query (both may hold
/// credentials).
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..end].rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((before, _)) => format!("{before}?{REDACTED}"),
        None => rest,
    };
    format!("{scheme}{rest}")
}

/// `k=v,k2=v2` with percent-encoded values (the W3C baggage format the variables use).
fn parse_pairs(s: &str, reveal: Reveal) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .enumerate()
        .map(|(i, pair)| {
            let (k, v) = pair.split_once('=').ok_or_else(|| match reveal {
                Reveal::Yes => format!("{pair:?} is not key=value"),
                Reveal::No => format!("entry {} is not key=value (its text is not shown)", i + 1),
            })?;
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
        otlp_settings(&env(pairs), &mut Vec::new())
    }

    #[test]
    fn logfile_traceparent_and_unusable_settings() {
        let r = Reporting::from_env(&env(&[
            ("LOGFILE", "/tmp/log.xml"),
            (
                "TRACEPARENT",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.example.com"),
        ]));
        assert_eq!(r.xml_log, Some(PathBuf::from("/tmp/log.xml")));
        let (trace, span) = r.parent.unwrap();
        assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.to_string(), "00f067aa0ba902b7");
        assert_eq!(r.otlp, None);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].ends_with("; spans are not exported"), "{r:?}");
        let r = Reporting::from_env(&env(&[("LOGFILE", ""), ("TRACEPARENT", "junk")]));
        assert_eq!(r, Reporting::default());
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
    fn credentials_never_show_in_debug_warnings_or_errors() {
        const SECRET: &str = "hunter2-s3cret";
        let r = Reporting::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                &format!("authorization=Bearer%20{SECRET},x-k={SECRET}"),
            ),
        ]));
        let s = r.otlp.as_ref().unwrap();
        assert_eq!(s.headers[1], ("x-k".into(), SECRET.into()), "still sent");
        for shown in [format!("{r:?}"), format!("{s:?}"), format!("{r:#?}")] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(shown.contains("authorization") && shown.contains(REDACTED));
        }
        let bad_entry = format!("x-k={SECRET},Authorization: Bearer {SECRET}");
        let bad_url_user = format!("http://me:{SECRET}@c:4318");
        let bad_url_query = format!("ftp://c:4318/v1?key={SECRET}");
        let bad_https = format!("https://me:{SECRET}@c/?token={SECRET}");
        for vars in [
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", bad_entry.as_str()),
            ],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", bad_url_user.as_str())],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", bad_url_query.as_str())],
            vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", bad_https.as_str())],
        ] {
            let e = settings(&vars).unwrap_err();
            assert!(!e.contains(SECRET), "{e}");
            let r = Reporting::from_env(&env(&vars));
            assert!(!format!("{r:?}").contains(SECRET), "{r:?}");
            assert_eq!(r.warnings.len(), 1, "{r:?}");
        }
        let e = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", &bad_entry),
        ])
        .unwrap_err();
        assert!(e.contains("entry 2 is not key=value"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &bad_url_user)]).unwrap_err();
        assert!(
            e.contains("credentials in the URL are not supported"),
            "{e}"
        );
    }

    #[test]
    fn resource_headers_and_protocol() {
        let mut warnings = Vec::new();
        let s = otlp_settings(
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
}
