//! A small HTTP/1.1 client over a unix socket: what a VMM's REST API (Firecracker, Cloud
//! Hypervisor) needs and no more. One request per connection (`Connection: close`), a JSON
//! body or none, the status and body back, everything within a per-call deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest answer read (a VMM's answers are a few hundred bytes).
const MAX_ANSWER: usize = 4 << 20;

/// How a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket could not be connected to.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed after connecting.
    #[error("{method} {url}: {source}")]
    Io {
        method: String,
        url: String,
        #[source]
        source: io::Error,
    },
    /// The answer is not HTTP/1.x as expected.
    #[error("{method} {url}: malformed answer: {detail}")]
    Malformed {
        method: String,
        url: String,
        detail: String,
    },
    /// No complete answer before the deadline.
    #[error("{method} {url}: no answer within {:.1} s", timeout.as_secs_f64())]
    TimedOut {
        method: String,
        url: String,
        timeout: Duration,
    },
}

/// An answer: the status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client of the API served on one unix socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the API on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `method path` with an optional JSON body and reads the answer, all within
    /// `timeout`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let started = Instant::now();
        let timed_out = || HttpError::TimedOut {
            method: method.to_string(),
            url: path.to_string(),
            timeout,
        };
        let io_err = |source: io::Error| {
            if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                timed_out()
            } else {
                HttpError::Io {
                    method: method.to_string(),
                    url: path.to_string(),
                    source,
                }
            }
        };
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| HttpError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let remaining = || {
            timeout
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
        );
        if !body.is_empty() || matches!(method, "PUT" | "PATCH" | "POST") {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream
            .set_write_timeout(Some(remaining().ok_or_else(timed_out)?))
            .map_err(io_err)?;
        stream.write_all(request.as_bytes()).map_err(io_err)?;

        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(answer) = parse(&buf).map_err(|detail| HttpError::Malformed {
                method: method.to_string(),
                url: path.to_string(),
                detail,
            })? {
                return Ok(answer);
            }
            let left = remaining().ok_or_else(timed_out)?;
            stream.set_read_timeout(Some(left)).map_err(io_err)?;
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            if n == 0 && buf.is_empty() {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed without an answer",
                )));
            }
            if n == 0 {
                // The server closed: what we have must be the whole answer.
                return parse_closed(&buf).map_err(|detail| HttpError::Malformed {
                    method: method.to_string(),
                    url: path.to_string(),
                    detail,
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_ANSWER {
                return Err(HttpError::Malformed {
                    method: method.to_string(),
                    url: path.to_string(),
                    detail: format!("the answer is longer than {MAX_ANSWER} bytes"),
                });
            }
        }
    }
}

/// The head of an answer: status and headers, and where the body starts.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    body_start: usize,
}

fn head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "the head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| format!("Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(Some(Head {
        status,
        content_length,
        chunked,
        body_start: end + 4,
    }))
}

/// The answer in `buf` once it is complete.
fn parse(buf: &[u8]) -> Result<Option<Response>, String> {
    let Some(h) = head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[h.body_start..];
    if h.chunked {
        return Ok(dechunk(rest)?.map(|body| Response {
            status: h.status,
            body,
        }));
    }
    let length = match h.content_length {
        Some(n) => n,
        // No body without a length for these; others run to the end of the connection.
        None if h.status == 204 || h.status == 304 || h.status < 200 => 0,
        None => return Ok(None),
    };
    Ok((rest.len() >= length).then(|| Response {
        status: h.status,
        body: rest[..length].to_vec(),
    }))
}

/// The answer in `buf` when the server closed the connection.
fn parse_closed(buf: &[u8]) -> Result<Response, String> {
    let h = head(buf)?.ok_or_else(|| "the connection closed within the head".to_string())?;
    let rest = &buf[h.body_start..];
    match h.content_length {
        Some(n) if rest.len() < n => Err(format!(
            "the connection closed after {} of {n} body bytes",
            rest.len()
        )),
        _ if h.chunked => Err("the connection closed within a chunked body".to_string()),
        Some(n) => Ok(Response {
            status: h.status,
            body: rest[..n].to_vec(),
        }),
        None => Ok(Response {
            status: h.status,
            body: rest.to_vec(),
        }),
    }
}

/// A chunked body, once its last chunk arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "chunk size".to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        let with_crlf = size
            .checked_add(2)
            .ok_or_else(|| format!("chunk size {size_text:?}"))?;
        if rest.len() < with_crlf {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::test_dir::TestDir;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// Serves one connection with `answer` and returns the request it got.
    fn serve_once(answer: &'static [u8]) -> (TestDir, std::thread::JoinHandle<String>) {
        let dir = TestDir::new();
        let listener = UnixListener::bind(dir.path().join("api.sock")).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            let mut stream = stream;
            stream.write_all(answer).unwrap();
            request
        });
        (dir, handle)
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[test]
    fn put_with_a_json_body_and_a_204() {
        let (dir, server) = serve_once(b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n");
        let client = Client::new(dir.path().join("api.sock"));
        let body = serde_json::json!({"vcpu_count": 2});
        let r = client
            .request("PUT", "/machine-config", Some(&body), SECOND)
            .unwrap();
        assert_eq!(r.status, 204);
        assert!(r.is_success());
        assert!(r.body.is_empty());
        let request = server.join().unwrap();
        assert!(
            request.starts_with("PUT /machine-config HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Content-Type: application/json\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n{\"vcpu_count\":2}"), "{request}");
    }

    #[test]
    fn an_error_answer_with_a_body() {
        let (dir, server) = serve_once(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"fault_message\":\"no way\"}\n",
        );
        let client = Client::new(dir.path().join("api.sock"));
        let r = client.request("GET", "/", None, SECOND).unwrap();
        assert_eq!(r.status, 400);
        assert!(!r.is_success());
        assert_eq!(r.text(), "{\"fault_message\":\"no way\"}\n");
        let request = server.join().unwrap();
        assert!(!request.contains("Content-Length"), "{request}");
    }

    #[test]
    fn a_chunked_answer() {
        let (dir, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        );
        let client = Client::new(dir.path().join("api.sock"));
        let r = client.request("GET", "/vm", None, SECOND).unwrap();
        assert_eq!((r.status, r.text()), (200, "{\"a\":1}".to_string()));
        server.join().unwrap();
    }

    #[test]
    fn a_body_up_to_the_end_of_the_connection() {
        let (dir, server) = serve_once(b"HTTP/1.0 200 OK\r\n\r\nall of it");
        let client = Client::new(dir.path().join("api.sock"));
        let r = client.request("GET", "/", None, SECOND).unwrap();
        assert_eq!(r.text(), "all of it");
        server.join().unwrap();
    }

    #[test]
    fn a_malformed_answer() {
        let (dir, server) = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n");
        let client = Client::new(dir.path().join("api.sock"));
        let e = client.request("GET", "/", None, SECOND).unwrap_err();
        assert!(matches!(e, HttpError::Malformed { .. }), "{e:?}");
        assert!(e.to_string().contains("malformed answer"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn a_truncated_answer_is_malformed() {
        let (dir, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");
        let client = Client::new(dir.path().join("api.sock"));
        let e = client.request("GET", "/", None, SECOND).unwrap_err();
        assert!(e.to_string().contains("closed after 5 of 10"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_closes_without_an_answer_is_an_io_error() {
        let dir = TestDir::new();
        let listener = UnixListener::bind(dir.path().join("api.sock")).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            drop(stream);
        });
        let client = Client::new(dir.path().join("api.sock"));
        let e = client.request("PUT", "/vm", None, SECOND).unwrap_err();
        server.join().unwrap();
        // the request may meet the closed socket while writing or while reading
        assert!(matches!(e, HttpError::Io { .. }), "{e:?}");
    }

    #[test]
    fn no_socket_is_a_connect_error() {
        let dir = TestDir::new();
        let client = Client::new(dir.path().join("missing.sock"));
        let e = client.request("GET", "/", None, SECOND).unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.sock"), "{e}");
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let dir = TestDir::new();
        let listener = UnixListener::bind(dir.path().join("api.sock")).unwrap();
        let client = Client::new(dir.path().join("api.sock"));
        // Accepted by the kernel's backlog; never read nor answered.
        let e = client
            .request("GET", "/", None, Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(e, HttpError::TimedOut { .. }), "{e:?}");
        assert!(
            e.to_string().contains("GET /: no answer within 0.1 s"),
            "{e}"
        );
        drop(listener);
    }
}
