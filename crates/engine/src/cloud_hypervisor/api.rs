//! Cloud Hypervisor's REST API as the backend uses it (`cloud-hypervisor.yaml`, under
//! `/api/v1`): `vm.create` with a VmConfig and `vm.boot`, pause and resume, reboot,
//! shutdown, and snapshot and restore into a directory. An error answer carries a JSON list
//! of messages, from the outermost error to its cause, which the error shows joined.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::vmm::api::{plain_fault, Call, GUEST_CID};
use crate::vmm::nics::Nic;
use crate::vmm::spec::VmmSpec;

const MIB: u64 = 1 << 20;

/// `PUT /api/v1/<name>` without a body.
pub fn put(name: &str) -> Call {
    put_with(name, Value::Null)
}

fn put_with(name: &str, body: Value) -> Call {
    Call::new("PUT", format!("/api/v1/{name}"), body)
}

/// The VmConfig of `spec`: the kernel payload, the root disk first, a NIC per VLAN, the
/// vsock on `vsock`, the serial port on the process's stdout and no virtio console.
pub fn vm_config(spec: &VmmSpec, vsock: &Path, nics: &[Nic]) -> Value {
    let mut payload = json!({
        "kernel": spec.kernel.display().to_string(),
        "cmdline": spec.cmdline,
    });
    if let Some(initrd) = &spec.initrd {
        payload["initramfs"] = json!(initrd.display().to_string());
    }
    let mut config = json!({
        "payload": payload,
        "cpus": {"boot_vcpus": spec.vcpus, "max_vcpus": spec.vcpus},
        "memory": {"size": u64::from(spec.memory_mib) * MIB},
        "vsock": {"cid": GUEST_CID, "socket": vsock.display().to_string()},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    });
    let root = spec.root_disk.iter().map(|p| (p, spec.root_read_only));
    let disks: Vec<Value> = root
        .chain(spec.disks.iter().map(|d| (&d.path, d.read_only)))
        .map(|(path, readonly)| json!({"path": path.display().to_string(), "readonly": readonly}))
        .collect();
    if !disks.is_empty() {
        config["disks"] = json!(disks);
    }
    if !nics.is_empty() {
        let net: Vec<Value> = nics
            .iter()
            .map(|n| json!({"tap": n.tap, "mac": n.mac}))
            .collect();
        config["net"] = json!(net);
    }
    config
}

/// The calls that create the VM and boot it.
pub fn boot_calls(spec: &VmmSpec, vsock: &Path, nics: &[Nic]) -> Vec<Call> {
    vec![
        put_with("vm.create", vm_config(spec, vsock, nics)),
        put("vm.boot"),
    ]
}

/// The directory of snapshot `name` in `state_dir`.
pub fn snapshot_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("snapshot-{name}"))
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// `vm.snapshot` into `dir` (the VM is paused).
pub fn snapshot(dir: &Path) -> Call {
    put_with("vm.snapshot", json!({"destination_url": file_url(dir)}))
}

/// The calls that restore a new process's VM from `dir` and resume it.
pub fn restore_calls(dir: &Path) -> Vec<Call> {
    vec![
        put_with("vm.restore", json!({"source_url": file_url(dir)})),
        put("vm.resume"),
    ]
}

/// What an error answer says: its list of messages joined, else its body.
pub(super) fn fault_message(status: u16, body: &[u8]) -> String {
    let messages: Option<Vec<String>> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.as_array()?
                .iter()
                .map(|m| m.as_str().map(String::from))
                .collect()
        })
        .filter(|m: &Vec<String>| !m.is_empty());
    match messages {
        Some(m) => format!("{} (HTTP {status})", m.join(": ")),
        None => plain_fault(status, body),
    }
}

/// The API of one Cloud Hypervisor process, for machine `machine` (tests).
#[cfg(test)]
pub(super) fn api(socket: impl Into<PathBuf>, machine: &str) -> crate::vmm::api::Api {
    crate::vmm::api::Api::new(socket, machine, "Cloud Hypervisor", fault_message)
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
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 256,
            vlans: vec![1],
        }
    }

    #[test]
    fn the_vm_config_of_a_spec() {
        let dir = TestDir::new();
        let d = dir.path().display();
        let nics = [Nic {
            tap: "ntng1n1".into(),
            mac: "52:54:00:12:01:01".into(),
        }];
        let config = vm_config(&spec(dir.path()), &dir.path().join("vsock.sock"), &nics);
        assert_eq!(
            config,
            json!({
                "payload": {"kernel": format!("{d}/vmlinux"), "initramfs": format!("{d}/initrd"),
                            "cmdline": "console=ttyS0"},
                "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
                "memory": {"size": 256u64 << 20},
                "disks": [{"path": format!("{d}/root.img"), "readonly": false},
                          {"path": format!("{d}/data.img"), "readonly": true}],
                "net": [{"tap": "ntng1n1", "mac": "52:54:00:12:01:01"}],
                "vsock": {"cid": 3, "socket": format!("{d}/vsock.sock")},
                "serial": {"mode": "Tty"},
                "console": {"mode": "Off"},
            })
        );
    }

    #[test]
    fn no_initrd_no_disks_no_nics() {
        let dir = TestDir::new();
        let mut s = spec(dir.path());
        s.initrd = None;
        s.root_disk = None;
        s.disks.clear();
        let config = vm_config(&s, &dir.path().join("v.sock"), &[]);
        assert!(config["payload"].get("initramfs").is_none());
        assert!(config.get("disks").is_none() && config.get("net").is_none());
    }

    #[test]
    fn the_boot_sequence_against_a_fake_api() {
        let dir = TestDir::new();
        let sock = dir.path().join("cloud-hypervisor.sock");
        let fake = FakeApi::serve(&sock);
        let s = spec(dir.path());
        let vsock = dir.path().join("vsock.sock");
        api(&sock, "m")
            .send_all(&boot_calls(&s, &vsock, &[]))
            .unwrap();
        assert_eq!(
            fake.calls(),
            ["PUT /api/v1/vm.create", "PUT /api/v1/vm.boot"]
        );
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen[0].body, vm_config(&s, &vsock, &[]));
        assert_eq!(seen[1].body, Value::Null);
    }

    #[test]
    fn each_api_error_names_the_machine_the_call_and_the_messages() {
        let dir = TestDir::new();
        let sock = dir.path().join("cloud-hypervisor.sock");
        let fake = FakeApi::serve(&sock);
        let api = api(&sock, "server");
        let calls = boot_calls(&spec(dir.path()), &dir.path().join("v.sock"), &[]);
        for (call, status, cause) in [
            (&calls[0], 400, "Failed to deserialize JSON"),
            (&calls[1], 404, "VM is not created"),
        ] {
            let key = format!("{} {}", call.method, call.path);
            fake.faults.lock().unwrap().clear();
            fake.fail(&key, status, json!(["Error from API", cause]));
            fake.seen.lock().unwrap().clear();
            let e = api.send_all(&calls).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "server: Cloud Hypervisor API call {key} failed: Error from API: {cause} (HTTP {status})"
                )
            );
            assert_eq!(fake.calls().last().unwrap(), &key);
        }
        let restore = restore_calls(dir.path());
        for call in [
            &snapshot(dir.path()),
            &put("vm.pause"),
            &restore[0],
            &restore[1],
        ] {
            let key = format!("{} {}", call.method, call.path);
            fake.fail(
                &key,
                500,
                json!(["Error from API", "The VM could not be snapshotted", "no"]),
            );
            let e = api.send(call).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "server: Cloud Hypervisor API call {key} failed: Error from API: The VM could not be snapshotted: no (HTTP 500)"
                )
            );
        }
    }

    #[test]
    fn an_error_without_messages_shows_its_body() {
        assert_eq!(fault_message(500, b"oops"), "HTTP 500: oops");
        assert_eq!(fault_message(404, b""), "HTTP 404 without a message");
        assert_eq!(fault_message(400, b"[]"), "HTTP 400: []");
        assert_eq!(fault_message(400, br#"["x", "y"]"#), "x: y (HTTP 400)");
    }

    #[test]
    fn snapshot_and_restore_calls() {
        let dir = Path::new("/s/snapshot-ready");
        assert_eq!(snapshot_dir(Path::new("/s"), "ready"), dir);
        let s = snapshot(dir);
        assert_eq!(s.path, "/api/v1/vm.snapshot");
        assert_eq!(
            s.body,
            json!({"destination_url": "file:///s/snapshot-ready"})
        );
        let r = restore_calls(dir);
        assert_eq!(r[0].path, "/api/v1/vm.restore");
        assert_eq!(r[0].body, json!({"source_url": "file:///s/snapshot-ready"}));
        assert_eq!(
            (r[1].path.as_str(), &r[1].body),
            ("/api/v1/vm.resume", &Value::Null)
        );
    }
}
