//! A small QMP client: one JSON object per line; replies are matched to requests by id,
//! events are queued for `wait_for_qmp_event`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::interrupt::{self, Deadline};

const MAX_QUEUED_EVENTS: usize = 4096;

/// The longest line (a greeting, reply or event) read from QMP, in bytes. QEMU's longest
/// answers (`query-qmp-schema`, a human command's text) are far below it; a longer line
/// ends the connection with an error naming the machine instead of growing without bound.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at the end of the stream.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut raw = Vec::new();
    reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut raw)?;
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a QMP line passed {MAX_LINE} bytes without a newline"),
        ));
    }
    String::from_utf8(raw)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[derive(Default)]
struct Events {
    queue: Mutex<VecDeque<Value>>,
    arrived: Condvar,
}

/// A connected QMP session.
pub struct Qmp {
    writer: Mutex<UnixStream>,
    replies: Receiver<Value>,
    events: Arc<Events>,
    next_id: AtomicU64,
    /// Serialises requests so replies are read in order.
    request: Mutex<()>,
    /// The machine, for errors.
    machine: String,
    /// Why the reader stopped, when QEMU sent something it could not read.
    failure: Arc<Mutex<Option<String>>>,
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("QMP {what}"), e)
}

impl Qmp {
    /// Connects to QEMU's QMP server socket, reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, machine: &str, deadline: Deadline) -> Result<Qmp> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if deadline.expired() => return Err(io_err("connect")(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io_err("connect"))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io_err("connect"))?);
        let greeting = read_line(&mut reader)
            .map_err(|e| Error::io(format!("{machine}: QMP greeting"), e))?
            .unwrap_or_default();
        if !greeting.contains("QMP") {
            return Err(Error::Qmp {
                class: "ProtocolError".into(),
                desc: format!("{machine}: unexpected greeting {greeting:?}"),
            });
        }
        stream.set_read_timeout(None).map_err(io_err("connect"))?;
        let (tx, rx) = unbounded();
        let events = Arc::new(Events::default());
        let ev = events.clone();
        let failure = Arc::new(Mutex::new(None));
        let failed = failure.clone();
        std::thread::Builder::new()
            .name(format!("ntng-qmp-{machine}"))
            .spawn(move || {
                loop {
                    let line = match read_line(&mut reader) {
                        Ok(Some(line)) => line,
                        Ok(None) => break,
                        Err(e) => {
                            *failed.lock().unwrap() = Some(e.to_string());
                            break;
                        }
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if v.get("event").is_some() {
                        let mut q = ev.queue.lock().unwrap();
                        if q.len() >= MAX_QUEUED_EVENTS {
                            q.pop_front();
                        }
                        q.push_back(v);
                        ev.arrived.notify_all();
                    } else if tx.send(v).is_err() {
                        break;
                    }
                }
                ev.arrived.notify_all();
            })
            .expect("cannot start the QMP reader thread");
        let qmp = Qmp {
            writer: Mutex::new(stream),
            replies: rx,
            events,
            next_id: AtomicU64::new(1),
            request: Mutex::new(()),
            machine: machine.to_string(),
            failure,
        };
        qmp.execute(
            "qmp_capabilities",
            None,
            Deadline::after(Some(Duration::from_secs(30))),
        )?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        deadline: Deadline,
    ) -> Result<Value> {
        let _serial = self.request.lock().unwrap();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .lock()
            .unwrap()
            .write_all(line.as_bytes())
            .map_err(io_err("write"))?;
        loop {
            interrupt::check()?;
            match self.replies.recv_timeout(deadline.slice()) {
                Ok(reply) => {
                    if reply.get("id").and_then(Value::as_u64) != Some(id) {
                        continue; // a late reply to an abandoned request
                    }
                    if let Some(err) = reply.get("error") {
                        return Err(Error::Qmp {
                            class: err["class"].as_str().unwrap_or("").to_string(),
                            desc: err["desc"].as_str().unwrap_or("").to_string(),
                        });
                    }
                    return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
                }
                Err(RecvTimeoutError::Timeout) if deadline.expired() => {
                    return Err(Error::Qmp {
                        class: "Timeout".into(),
                        desc: format!("no reply to `{command}`"),
                    })
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let machine = &self.machine;
                    let desc = match &*self.failure.lock().unwrap() {
                        Some(why) => format!(
                            "{machine}: QMP stopped being read before `{command}` was answered: {why}"
                        ),
                        None => format!("{machine}: QEMU closed QMP during `{command}`"),
                    };
                    return Err(Error::Qmp {
                        class: "Disconnected".into(),
                        desc,
                    });
                }
            }
        }
    }

    /// Runs a human-monitor command through QMP.
    pub fn human(&self, command_line: &str, deadline: Deadline) -> Result<String> {
        let r = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
            deadline,
        )?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }

    /// Forgets the events queued so far.
    pub fn discard_events(&self) {
        self.events.queue.lock().unwrap().clear();
    }

    /// Takes the next queued event, waiting until `deadline`.
    pub fn next_event(&self, deadline: Deadline) -> Result<Option<Value>> {
        let mut q = self.events.queue.lock().unwrap();
        loop {
            if let Some(v) = q.pop_front() {
                return Ok(Some(v));
            }
            if deadline.expired() {
                return Ok(None);
            }
            interrupt::check()?;
            q = self
                .events
                .arrived
                .wait_timeout(q, deadline.slice())
                .unwrap()
                .0;
        }
    }
}

#[cfg(test)]
mod properties;
