//! A VMM's REST API as the backends send it: one call is a method, a path and a JSON body;
//! an error answer becomes an error naming the machine, the VMM, the call and what the
//! answer said (each VMM reads its own error bodies: `Api::new`'s `fault`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::error::Error;
use crate::vmm::http::{Client, HttpError};

/// How long one API call may take (a snapshot of a large guest writes its memory).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The guest's vsock CID (the only guest on its socket).
pub const GUEST_CID: u32 = 3;

/// One API request.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

impl Call {
    /// `method path` with `body` (`Value::Null`: no body).
    pub fn new(method: &'static str, path: impl Into<String>, body: Value) -> Self {
        Call {
            method,
            path: path.into(),
            body,
        }
    }
}

/// What an error answer says, from its status and body.
pub type FaultReader = fn(u16, &[u8]) -> String;

/// The API of one VMM process, for machine `machine`.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
    machine: String,
    vmm: &'static str,
    fault: FaultReader,
}

impl Api {
    /// The API of VMM `vmm` ("Firecracker") on `socket`, its error answers read by `fault`.
    pub fn new(
        socket: impl Into<PathBuf>,
        machine: impl Into<String>,
        vmm: &'static str,
        fault: FaultReader,
    ) -> Self {
        Api {
            client: Client::new(socket),
            machine: machine.into(),
            vmm,
            fault,
        }
    }

    /// Sends `call`; a failure is an error naming the machine, the call and the fault.
    pub fn send(&self, call: &Call) -> Result<Value, Error> {
        let what = format!("{} API call {} {}", self.vmm, call.method, call.path);
        let failed = |message: String| Error::Guest {
            machine: self.machine.clone(),
            message: format!("{what} failed: {message}"),
            console_tail: Vec::new(),
        };
        let body = (!call.body.is_null()).then_some(&call.body);
        let answer = self
            .client
            .request(call.method, &call.path, body, CALL_TIMEOUT)
            .map_err(|e| {
                failed(match e {
                    HttpError::Connect { source, .. } => format!(
                        "cannot reach its API socket {} ({source})",
                        self.client.socket().display()
                    ),
                    e => e.to_string(),
                })
            })?;
        if answer.is_success() {
            return Ok(serde_json::from_slice(&answer.body).unwrap_or(Value::Null));
        }
        Err(failed((self.fault)(answer.status, &answer.body)))
    }

    /// Sends `calls` in order, up to the first failure.
    pub fn send_all(&self, calls: &[Call]) -> Result<(), Error> {
        calls.iter().try_for_each(|c| self.send(c).map(drop))
    }
}

/// An error answer's body when the VMM's own reading found nothing in it.
pub fn plain_fault(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).trim().to_string();
    if text.is_empty() {
        format!("HTTP {status} without a message")
    } else {
        format!("HTTP {status}: {text}")
    }
}

#[cfg(test)]
pub(crate) mod fake_server {
    //! A fake VMM API: records each request, answers 204, or a given error for a call.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    /// A recorded request.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Seen {
        pub method: String,
        pub path: String,
        pub body: serde_json::Value,
    }

    /// The fake server's shared state.
    #[derive(Default)]
    pub struct FakeApi {
        pub seen: Mutex<Vec<Seen>>,
        /// `(method path, status, body)`: that call fails.
        pub faults: Mutex<Vec<(String, u16, serde_json::Value)>>,
    }

    impl FakeApi {
        /// Serves on `path` in a thread until the process ends.
        pub fn serve(path: &Path) -> Arc<FakeApi> {
            let api = Arc::new(FakeApi::default());
            Self::serve_with(path, api.clone());
            api
        }

        /// Serves `api` on `path` in a thread until the process ends.
        pub fn serve_with(path: &Path, api: Arc<FakeApi>) {
            let listener = UnixListener::bind(path).unwrap();
            let shared = api.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let api = shared.clone();
                    std::thread::spawn(move || api.answer(stream));
                }
            });
        }

        fn answer(&self, stream: std::os::unix::net::UnixStream) {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = first.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let key = format!("{method} {path}");
            self.seen.lock().unwrap().push(Seen { method, path, body });
            let fault = self
                .faults
                .lock()
                .unwrap()
                .iter()
                .find(|(k, _, _)| *k == key)
                .cloned();
            let mut stream = stream;
            let answer = match fault {
                Some((_, status, body)) => {
                    let body = body.to_string();
                    format!(
                        "HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                None => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            };
            let _ = stream.write_all(answer.as_bytes());
        }

        /// `method path` answers `status` with `body`.
        pub fn fail(&self, call: &str, status: u16, body: serde_json::Value) {
            self.faults
                .lock()
                .unwrap()
                .push((call.to_string(), status, body));
        }

        /// `method path` of each request so far.
        pub fn calls(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|s| format!("{} {}", s.method, s.path))
                .collect()
        }
    }
}
