//! Firecracker's REST API as the backend uses it (`firecracker.yaml`): the calls that
//! configure and start a microVM, pause and resume it, and create and load snapshots. An
//! error answer carries `{"fault_message": ...}`, which the error shows with the machine and
//! the call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::Error;
use crate::vmm::http::{Client, HttpError};
use crate::vmm::spec::VmmSpec;

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
    fn new(method: &'static str, path: impl Into<String>, body: Value) -> Self {
        Call {
            method,
            path: path.into(),
            body,
        }
    }
}

/// A NIC: the host's TAP and the guest's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

/// The calls that configure a microVM and start it, in order.
pub fn boot_calls(spec: &VmmSpec, vsock: &Path, nics: &[Nic]) -> Vec<Call> {
    let mut calls = vec![
        Call::new(
            "PUT",
            "/machine-config",
            json!({"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib}),
        ),
        {
            let mut boot = json!({
                "kernel_image_path": spec.kernel.display().to_string(),
                "boot_args": spec.cmdline,
            });
            if let Some(initrd) = &spec.initrd {
                boot["initrd_path"] = json!(initrd.display().to_string());
            }
            Call::new("PUT", "/boot-source", boot)
        },
    ];
    if let Some(root) = &spec.root_disk {
        calls.push(Call::new(
            "PUT",
            "/drives/rootfs",
            json!({
                "drive_id": "rootfs",
                "path_on_host": root.display().to_string(),
                "is_root_device": true,
                "is_read_only": spec.root_read_only,
            }),
        ));
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        let id = format!("disk{}", i + 1);
        calls.push(Call::new(
            "PUT",
            format!("/drives/{id}"),
            json!({
                "drive_id": id,
                "path_on_host": disk.path.display().to_string(),
                "is_root_device": false,
                "is_read_only": disk.read_only,
            }),
        ));
    }
    calls.push(Call::new(
        "PUT",
        "/vsock",
        json!({"guest_cid": GUEST_CID, "uds_path": vsock.display().to_string()}),
    ));
    for (i, nic) in nics.iter().enumerate() {
        let id = format!("eth{i}");
        calls.push(Call::new(
            "PUT",
            format!("/network-interfaces/{id}"),
            json!({"iface_id": id, "host_dev_name": nic.tap, "guest_mac": nic.mac}),
        ));
    }
    calls.push(action("InstanceStart"));
    calls
}

/// `PUT /actions` with `action_type`.
pub fn action(action_type: &str) -> Call {
    Call::new("PUT", "/actions", json!({"action_type": action_type}))
}

/// `PATCH /vm` to `Paused` or `Resumed`.
pub fn vm_state(paused: bool) -> Call {
    let state = if paused { "Paused" } else { "Resumed" };
    Call::new("PATCH", "/vm", json!({"state": state}))
}

/// The files of a snapshot: the VM state and the guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub memory: PathBuf,
}

impl SnapshotFiles {
    /// Snapshot `name` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        SnapshotFiles {
            state: dir.join(format!("snapshot-{name}.vmstate")),
            memory: dir.join(format!("snapshot-{name}.mem")),
        }
    }
}

/// `PUT /snapshot/create`: a full snapshot into `files`.
pub fn snapshot_create(files: &SnapshotFiles) -> Call {
    Call::new(
        "PUT",
        "/snapshot/create",
        json!({
            "snapshot_type": "Full",
            "snapshot_path": files.state.display().to_string(),
            "mem_file_path": files.memory.display().to_string(),
        }),
    )
}

/// `PUT /snapshot/load`: the microVM from `files`, resumed.
pub fn snapshot_load(files: &SnapshotFiles) -> Call {
    Call::new(
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": files.state.display().to_string(),
            "mem_backend": {
                "backend_type": "File",
                "backend_path": files.memory.display().to_string(),
            },
            "resume_vm": true,
        }),
    )
}

/// The API of one Firecracker process, for machine `machine`.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
    machine: String,
}

impl Api {
    /// The API on `socket`.
    pub fn new(socket: impl Into<PathBuf>, machine: impl Into<String>) -> Self {
        Api {
            client: Client::new(socket),
            machine: machine.into(),
        }
    }

    /// Sends `call`; a failure is an error naming the machine, the call and the fault.
    pub fn send(&self, call: &Call) -> Result<Value, Error> {
        let what = format!("Firecracker API call {} {}", call.method, call.path);
        let failed = |message: String| Error::Guest {
            machine: self.machine.clone(),
            message: format!("{what} failed: {message}"),
            console_tail: Vec::new(),
        };
        let answer = self
            .client
            .request(call.method, &call.path, Some(&call.body), CALL_TIMEOUT)
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
        Err(failed(fault_message(answer.status, &answer.body)))
    }

    /// Sends `calls` in order, up to the first failure.
    pub fn send_all(&self, calls: &[Call]) -> Result<(), Error> {
        calls.iter().try_for_each(|c| self.send(c).map(drop))
    }
}

/// What an error answer says: its `fault_message`, else its body.
fn fault_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).trim().to_string();
    let fault = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("fault_message")
            .and_then(Value::as_str)
            .map(String::from)
    });
    match fault {
        Some(f) => format!("{f} (HTTP {status})"),
        None if text.is_empty() => format!("HTTP {status} without a message"),
        None => format!("HTTP {status}: {text}"),
    }
}

#[cfg(test)]
pub(crate) mod fake_server {
    //! A fake Firecracker API: records each request, answers 204, or a fault for a path.

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
        /// `(method path, status, fault_message)`: that call fails.
        pub faults: Mutex<Vec<(String, u16, String)>>,
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
                Some((_, status, message)) => {
                    let body = serde_json::json!({ "fault_message": message }).to_string();
                    format!(
                        "HTTP/1.1 {status} Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                None => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            };
            let _ = stream.write_all(answer.as_bytes());
        }

        /// `method path` answers `status` with `message`.
        pub fn fail(&self, call: &str, status: u16, message: &str) {
            self.faults
                .lock()
                .unwrap()
                .push((call.to_string(), status, message.to_string()));
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

#[cfg(test)]
mod tests {
    use super::fake_server::FakeApi;
    use super::*;
    use crate::vmm::spec::Disk;
    use crate::vmm::test_dir::TestDir;

    fn spec(dir: &Path) -> VmmSpec {
        VmmSpec {
            kernel: dir.join("vmlinux"),
            initrd: Some(dir.join("initrd")),
            root_disk: Some(dir.join("root.img")),
            root_read_only: false,
            disks: vec![Disk {
                path: dir.join("data.img"),
                read_only: true,
            }],
            cmdline: "console=ttyS0 reboot=k".into(),
            vcpus: 2,
            memory_mib: 256,
            vlans: vec![1],
        }
    }

    #[test]
    fn the_boot_sequence_against_a_fake_api() {
        let dir = TestDir::new();
        let sock = dir.path().join("firecracker.sock");
        let fake = FakeApi::serve(&sock);
        let nics = [Nic {
            tap: "ntng1n1".into(),
            mac: "52:54:00:12:01:01".into(),
        }];
        let vsock = dir.path().join("vsock.sock");
        let calls = boot_calls(&spec(dir.path()), &vsock, &nics);
        Api::new(&sock, "m").send_all(&calls).unwrap();
        assert_eq!(
            fake.calls(),
            [
                "PUT /machine-config",
                "PUT /boot-source",
                "PUT /drives/rootfs",
                "PUT /drives/disk1",
                "PUT /vsock",
                "PUT /network-interfaces/eth0",
                "PUT /actions",
            ]
        );
        let seen = fake.seen.lock().unwrap().clone();
        let d = dir.path().display();
        assert_eq!(seen[0].body, json!({"vcpu_count": 2, "mem_size_mib": 256}));
        assert_eq!(
            seen[1].body,
            json!({"kernel_image_path": format!("{d}/vmlinux"), "initrd_path": format!("{d}/initrd"),
                   "boot_args": "console=ttyS0 reboot=k"})
        );
        assert_eq!(
            seen[2].body,
            json!({"drive_id": "rootfs", "path_on_host": format!("{d}/root.img"),
                   "is_root_device": true, "is_read_only": false})
        );
        assert_eq!(
            seen[3].body,
            json!({"drive_id": "disk1", "path_on_host": format!("{d}/data.img"),
                   "is_root_device": false, "is_read_only": true})
        );
        assert_eq!(
            seen[4].body,
            json!({"guest_cid": 3, "uds_path": format!("{d}/vsock.sock")})
        );
        assert_eq!(
            seen[5].body,
            json!({"iface_id": "eth0", "host_dev_name": "ntng1n1", "guest_mac": "52:54:00:12:01:01"})
        );
        assert_eq!(seen[6].body, json!({"action_type": "InstanceStart"}));
    }

    #[test]
    fn no_initrd_no_disks_no_nics() {
        let dir = TestDir::new();
        let mut s = spec(dir.path());
        s.initrd = None;
        s.root_disk = None;
        s.disks.clear();
        let calls = boot_calls(&s, &dir.path().join("v.sock"), &[]);
        let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/machine-config", "/boot-source", "/vsock", "/actions"]
        );
        assert!(calls[1].body.get("initrd_path").is_none());
    }

    #[test]
    fn each_api_error_names_the_machine_the_call_and_the_fault() {
        let dir = TestDir::new();
        let sock = dir.path().join("firecracker.sock");
        let fake = FakeApi::serve(&sock);
        let api = Api::new(&sock, "server");
        let calls = boot_calls(&spec(dir.path()), &dir.path().join("v.sock"), &[]);
        for call in &calls {
            let key = format!("{} {}", call.method, call.path);
            fake.faults.lock().unwrap().clear();
            fake.fail(&key, 400, &format!("bad {}", call.path));
            fake.seen.lock().unwrap().clear();
            let e = api.send_all(&calls).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "server: Firecracker API call {key} failed: bad {} (HTTP 400)",
                    call.path
                )
            );
            // nothing after the failed call was sent
            assert_eq!(fake.calls().last().unwrap(), &key);
        }
        for call in [
            vm_state(true),
            snapshot_create(&SnapshotFiles::in_dir(dir.path(), "a")),
        ] {
            let key = format!("{} {}", call.method, call.path);
            fake.fail(&key, 400, "Create snapshot error: no");
            let e = api.send(&call).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("server: Firecracker API call {key} failed: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn an_error_without_a_fault_message_shows_its_body() {
        assert_eq!(fault_message(500, b"oops"), "HTTP 500: oops");
        assert_eq!(fault_message(404, b""), "HTTP 404 without a message");
        assert_eq!(
            fault_message(400, br#"{"fault_message": "x"}"#),
            "x (HTTP 400)"
        );
    }

    #[test]
    fn an_api_that_is_gone_is_named() {
        let dir = TestDir::new();
        let e = Api::new(dir.path().join("gone.sock"), "m")
            .send(&action("SendCtrlAltDel"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "m: Firecracker API call PUT /actions failed: cannot reach its API socket"
            ),
            "{e}"
        );
    }

    #[test]
    fn snapshot_calls() {
        let files = SnapshotFiles::in_dir(Path::new("/s"), "ready");
        assert_eq!(
            snapshot_create(&files).body,
            json!({"snapshot_type": "Full", "snapshot_path": "/s/snapshot-ready.vmstate",
                   "mem_file_path": "/s/snapshot-ready.mem"})
        );
        assert_eq!(
            snapshot_load(&files).body,
            json!({"snapshot_path": "/s/snapshot-ready.vmstate",
                   "mem_backend": {"backend_type": "File", "backend_path": "/s/snapshot-ready.mem"},
                   "resume_vm": true})
        );
        assert_eq!(vm_state(true).body, json!({"state": "Paused"}));
        assert_eq!(vm_state(false).method, "PATCH");
    }
}
