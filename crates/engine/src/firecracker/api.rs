//! Firecracker's REST API as the backend uses it (`firecracker.yaml`): the calls that
//! configure and start a microVM (with dirty-page tracking, for diff snapshots, and a metrics
//! file), pause and resume it, create (full or diff) and load snapshots, and flush metrics. An
//! error answer carries `{"fault_message": ...}`, which the error shows with the machine and
//! the call.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::vmm::api::{plain_fault, Call, GUEST_CID};
use crate::vmm::nics::Nic;
use crate::vmm::spec::VmmSpec;

/// The calls that configure a microVM and start it, in order: its metrics go to `metrics`
/// (which must exist: Firecracker does not create it).
pub fn boot_calls(spec: &VmmSpec, vsock: &Path, nics: &[Nic], metrics: &Path) -> Vec<Call> {
    let mut calls = vec![
        metrics_call(metrics),
        Call::new(
            "PUT",
            "/machine-config",
            json!({"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib,
                   "track_dirty_pages": true}),
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

/// `PUT /metrics`: Firecracker writes its metrics to `path` (at each `FlushMetrics`, and
/// every minute), one JSON object a line.
pub fn metrics_call(path: &Path) -> Call {
    Call::new(
        "PUT",
        "/metrics",
        json!({"metrics_path": path.display().to_string()}),
    )
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

    /// Where Firecracker writes a diff snapshot's sparse memory, before the backend builds
    /// the complete memory file from it.
    pub fn diff_memory(&self) -> PathBuf {
        let mut path = self.memory.clone().into_os_string();
        path.push(".diff");
        path.into()
    }
}

/// What `snapshot/create` writes to the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotType {
    /// All of the guest's memory.
    Full,
    /// Only the pages dirtied since the previous snapshot, at their offsets (a sparse file).
    Diff,
}

/// `PUT /snapshot/create`: a snapshot of type `kind`, its state to `state`, its memory to
/// `memory`.
pub fn snapshot_create(state: &Path, memory: &Path, kind: SnapshotType) -> Call {
    let kind = match kind {
        SnapshotType::Full => "Full",
        SnapshotType::Diff => "Diff",
    };
    Call::new(
        "PUT",
        "/snapshot/create",
        json!({
            "snapshot_type": kind,
            "snapshot_path": state.display().to_string(),
            "mem_file_path": memory.display().to_string(),
        }),
    )
}

/// `PUT /snapshot/load`: the microVM from `files`, resumed, tracking dirty pages again
/// (`enable_diff_snapshots`: the name every Firecracker with snapshots accepts; 1.7 added
/// `track_dirty_pages` as its new name).
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
            "enable_diff_snapshots": true,
            "resume_vm": true,
        }),
    )
}

/// What an error answer says: its `fault_message`, else its body.
pub(super) fn fault_message(status: u16, body: &[u8]) -> String {
    let fault = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("fault_message")
            .and_then(Value::as_str)
            .map(String::from)
    });
    match fault {
        Some(f) => format!("{f} (HTTP {status})"),
        None => plain_fault(status, body),
    }
}

/// The API of one Firecracker process, for machine `machine` (tests).
#[cfg(test)]
pub(super) fn api(socket: impl Into<PathBuf>, machine: &str) -> crate::vmm::api::Api {
    crate::vmm::api::Api::new(socket, machine, "Firecracker", fault_message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::api::fake_server::FakeApi;
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
        let metrics = dir.path().join("firecracker-metrics.json");
        let calls = boot_calls(&spec(dir.path()), &vsock, &nics, &metrics);
        api(&sock, "m").send_all(&calls).unwrap();
        assert_eq!(
            fake.calls(),
            [
                "PUT /metrics",
                "PUT /machine-config",
                "PUT /boot-source",
                "PUT /drives/rootfs",
                "PUT /drives/disk1",
                "PUT /vsock",
                "PUT /network-interfaces/eth0",
                "PUT /actions",
            ]
        );
        let mut seen = fake.seen.lock().unwrap().clone();
        let d = dir.path().display();
        assert_eq!(
            seen.remove(0).body,
            json!({"metrics_path": format!("{d}/firecracker-metrics.json")})
        );
        assert_eq!(
            seen[0].body,
            json!({"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true})
        );
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
        let calls = boot_calls(&s, &dir.path().join("v.sock"), &[], &dir.path().join("m"));
        let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/metrics",
                "/machine-config",
                "/boot-source",
                "/vsock",
                "/actions"
            ]
        );
        assert!(calls[2].body.get("initrd_path").is_none());
    }

    #[test]
    fn each_api_error_names_the_machine_the_call_and_the_fault() {
        let dir = TestDir::new();
        let sock = dir.path().join("firecracker.sock");
        let fake = FakeApi::serve(&sock);
        let api = api(&sock, "server");
        let calls = boot_calls(
            &spec(dir.path()),
            &dir.path().join("v.sock"),
            &[],
            &dir.path().join("m"),
        );
        for call in &calls {
            let key = format!("{} {}", call.method, call.path);
            fake.faults.lock().unwrap().clear();
            fake.fail(
                &key,
                400,
                json!({"fault_message": format!("bad {}", call.path)}),
            );
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
            snapshot_create(
                &dir.path().join("a.vmstate"),
                &dir.path().join("a.mem"),
                SnapshotType::Diff,
            ),
        ] {
            let key = format!("{} {}", call.method, call.path);
            fake.fail(
                &key,
                400,
                json!({"fault_message": "Create snapshot error: no"}),
            );
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
        let e = api(dir.path().join("gone.sock"), "m")
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
            snapshot_create(&files.state, &files.memory, SnapshotType::Full).body,
            json!({"snapshot_type": "Full", "snapshot_path": "/s/snapshot-ready.vmstate",
                   "mem_file_path": "/s/snapshot-ready.mem"})
        );
        assert_eq!(files.diff_memory(), Path::new("/s/snapshot-ready.mem.diff"));
        assert_eq!(
            snapshot_create(&files.state, &files.diff_memory(), SnapshotType::Diff).body,
            json!({"snapshot_type": "Diff", "snapshot_path": "/s/snapshot-ready.vmstate",
                   "mem_file_path": "/s/snapshot-ready.mem.diff"})
        );
        assert_eq!(
            snapshot_load(&files).body,
            json!({"snapshot_path": "/s/snapshot-ready.vmstate",
                   "mem_backend": {"backend_type": "File", "backend_path": "/s/snapshot-ready.mem"},
                   "enable_diff_snapshots": true, "resume_vm": true})
        );
        assert_eq!(
            metrics_call(Path::new("/s/firecracker-metrics.json")).body,
            json!({"metrics_path": "/s/firecracker-metrics.json"})
        );
        assert_eq!(vm_state(true).body, json!({"state": "Paused"}));
        assert_eq!(vm_state(false).method, "PATCH");
    }
}
