//! A small QMP client: one JSON object per line; replies are matched to requests by id,
//! events are queued for `wait_for_qmp_event`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
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
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("QMP {what}"), e)
}

impl Qmp {
    /// Connects to QEMU's QMP server socket, reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, deadline: Deadline) -> Result<Qmp> {
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
        let mut greeting = String::new();
        reader
            .read_line(&mut greeting)
            .map_err(io_err("greeting"))?;
        if !greeting.contains("QMP") {
            return Err(Error::Qmp {
                class: "ProtocolError".into(),
                desc: format!("unexpected greeting {greeting:?}"),
            });
        }
        stream.set_read_timeout(None).map_err(io_err("connect"))?;
        let (tx, rx) = unbounded();
        let events = Arc::new(Events::default());
        let ev = events.clone();
        std::thread::Builder::new()
            .name("ntng-qmp".into())
            .spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
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
                    return Err(Error::Qmp {
                        class: "Disconnected".into(),
                        desc: format!("QEMU closed QMP during `{command}`"),
                    })
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
