//! VLAN NICs of a VMM machine: TAP devices joined to the VLAN's `vde_switch` (through
//! `vde_plug2tap`), inside a network namespace the run owns, so nothing is left in the host's
//! namespace and nothing survives the driver: the namespace lives as long as its holder
//! process (`unshare --net`, in its own process group, killed with the driver), and the
//! VMM runs inside it (`nsenter --net=/proc/<holder>/ns/net`).
//!
//! A NIC's TAP is `ntng<vlan>n<node>` (the VMM opens it), bridged to a TAP that
//! `vde_plug2tap` holds on the switch; its guest MAC is `52:54:00:12:<vlan>:<node>` in hex, as
//! a QEMU VM's. Creating TAPs needs root.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::interrupt::Deadline;
use crate::process::{self, ChildProcess};

/// How long the namespace and a TAP may take to appear.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// How setting up the network failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// TAP devices need root.
    #[error(
        "a machine with VLAN NICs needs root (TAP devices in the run's network namespace); you are uid {0}"
    )]
    NotRoot(u32),
    /// The machine's VLAN has no switch in this run.
    #[error(
        "VLAN {0} is not one of the run's VLANs (no QEMU_VDE_SOCKET_{0}): add it with --vlans"
    )]
    NoSwitch(u32),
    /// A helper program failed.
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
}

/// The run's network namespace, alive while its holder process runs.
pub struct Netns {
    holder: ChildProcess,
}

impl Netns {
    /// The run's namespace: the one in use, or a new one.
    pub fn shared() -> Result<Arc<Netns>, TapError> {
        static SHARED: Mutex<Weak<Netns>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap();
        if let Some(ns) = slot.upgrade().filter(|ns| ns.holder.is_running()) {
            return Ok(ns);
        }
        let ns = Arc::new(Netns::create()?);
        *slot = Arc::downgrade(&ns);
        Ok(ns)
    }

    fn create() -> Result<Netns, TapError> {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let holder = process::spawn(cmd).map_err(|e| TapError::Command {
            what: "starting `unshare --net` (util-linux)".into(),
            detail: e.to_string(),
        })?;
        let ours = std::fs::read_link("/proc/self/ns/net").ok();
        let deadline = Deadline::after(Some(APPEAR_TIMEOUT));
        loop {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/net", holder.pid())).ok();
            if theirs.is_some() && theirs != ours {
                break;
            }
            if let Some(status) = holder.exit_status() {
                return Err(TapError::Command {
                    what: "`unshare --net`".into(),
                    detail: format!("exited ({status}): {}", stderr_of(&holder)),
                });
            }
            if deadline.expired() {
                holder.kill();
                return Err(TapError::Command {
                    what: "`unshare --net`".into(),
                    detail: "made no network namespace in time".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Netns { holder })
    }

    /// `/proc/<holder>/ns/net`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.pid()))
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Whether the namespace has a device `name`.
    fn has_device(&self, name: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{}/net/dev", self.holder.pid()))
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim_start().split(':').next() == Some(name))
    }

    /// `ip link set <name> up|down` in the namespace.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), TapError> {
        let state = if up { "up" } else { "down" };
        let out = self
            .command("ip")
            .args(["link", "set", name, state])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| TapError::Command {
                what: format!("`ip link set {name} {state}`"),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TapError::Command {
                what: format!("`ip link set {name} {state}`"),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

fn stderr_of(p: &ChildProcess) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut e) = p.take_stderr() {
        let _ = e.read_to_string(&mut text);
    }
    text.trim().to_string()
}

/// A NIC's TAP device, bridged to its VLAN's switch (the plug goes with it). The VMM opens
/// the TAP itself, so the switch is reached through a second TAP that `vde_plug2tap` holds,
/// and a bridge joins the two: `ntng<v>n<n>` (the VMM's) and `ntngp<v>n<n>` (the plug's) are
/// the ports of `ntngb<v>n<n>`.
pub struct Tap {
    /// `ntng<vlan>n<node>`.
    pub name: String,
    /// The guest's MAC address.
    pub mac: String,
    /// The VLAN.
    pub vlan: u32,
    plug: ChildProcess,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.plug.kill();
    }
}

/// The TAP name of node `node` on VLAN `vlan`.
pub fn tap_name(vlan: u32, node: u32) -> String {
    format!("ntng{vlan}n{node}")
}

/// The guest MAC of node `node` on VLAN `vlan` (as QEMU VMs get).
pub fn guest_mac(vlan: u32, node: u32) -> String {
    format!("52:54:00:12:{:02x}:{:02x}", vlan & 0xff, node & 0xff)
}

/// The switch socket directory of `vlan` in the start scripts' environment.
pub fn switch_dir(env: &[(String, String)], vlan: u32) -> Option<PathBuf> {
    let key = format!("QEMU_VDE_SOCKET_{vlan}");
    env.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| PathBuf::from(v))
}

/// Checks that TAPs can be made for `vlans` (root; each VLAN has a switch).
pub fn check(vlans: &[u32], env: &[(String, String)]) -> Result<(), TapError> {
    if vlans.is_empty() {
        return Ok(());
    }
    // SAFETY: plain getter.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(TapError::NotRoot(uid));
    }
    match vlans.iter().find(|v| switch_dir(env, **v).is_none()) {
        Some(v) => Err(TapError::NoSwitch(*v)),
        None => Ok(()),
    }
}

/// The shell lines that make the VMM's TAP `$1` and the bridge `$2` in the namespace.
const MAKE_TAP_AND_BRIDGE: &str = "set -e
ip link del \"$1\" 2>/dev/null || true
ip link del \"$2\" 2>/dev/null || true
ip tuntap add dev \"$1\" mode tap
ip link add \"$2\" type bridge
ip link set \"$1\" master \"$2\"
ip link set \"$1\" up
ip link set \"$2\" up";

/// The shell line that adds the plug's TAP `$1` to the bridge `$2`.
const JOIN_BRIDGE: &str = "set -e; ip link set \"$1\" master \"$2\"; ip link set \"$1\" up";

fn run_in(ns: &Netns, what: &str, script: &str, args: &[&str]) -> Result<(), TapError> {
    let out = ns
        .command("sh")
        .args(["-c", script, "sh"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TapError::Command {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TapError::Command {
            what: what.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Creates node `node`'s TAP on `vlan` in `ns`, bridged to the switch at `switch`, link up.
pub fn plug(ns: &Netns, vlan: u32, node: u32, switch: &std::path::Path) -> Result<Tap, TapError> {
    let name = tap_name(vlan, node);
    let bridge = format!("ntngb{vlan}n{node}");
    let port = format!("ntngp{vlan}n{node}");
    run_in(
        ns,
        &format!("creating TAP {name} and bridge {bridge} (ip, iproute2)"),
        MAKE_TAP_AND_BRIDGE,
        &[&name, &bridge],
    )?;
    let mut cmd = ns.command("vde_plug2tap");
    cmd.arg("-s")
        .arg(switch)
        .arg(&port)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let plug = process::spawn(cmd).map_err(|e| TapError::Command {
        what: format!("starting `vde_plug2tap` for {port}"),
        detail: e.to_string(),
    })?;
    let deadline = Deadline::after(Some(APPEAR_TIMEOUT));
    while !ns.has_device(&port) {
        if let Some(status) = plug.exit_status() {
            return Err(TapError::Command {
                what: format!("`vde_plug2tap -s {} {port}`", switch.display()),
                detail: format!("exited ({status}): {}", stderr_of(&plug)),
            });
        }
        if deadline.expired() {
            plug.kill();
            return Err(TapError::Command {
                what: format!("`vde_plug2tap` for {port}"),
                detail: "the TAP device did not appear in time".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let tap = Tap {
        name,
        mac: guest_mac(vlan, node),
        vlan,
        plug,
    };
    run_in(
        ns,
        &format!("adding {port} to bridge {bridge}"),
        JOIN_BRIDGE,
        &[&port, &bridge],
    )?;
    Ok(tap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        assert_eq!(tap_name(1, 2), "ntng1n2");
        assert_eq!(tap_name(255, 255).len(), 11); // IFNAMSIZ is 16 with the NUL
        assert_eq!(guest_mac(1, 2), "52:54:00:12:01:02");
        assert_eq!(guest_mac(17, 255), "52:54:00:12:11:ff");
    }

    #[test]
    fn a_vlan_without_a_switch_is_named() {
        let env = vec![("QEMU_VDE_SOCKET_1".to_string(), "/tmp/vde1".to_string())];
        assert_eq!(switch_dir(&env, 1), Some(PathBuf::from("/tmp/vde1")));
        assert!(check(&[], &[]).is_ok());
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } == 0 {
            let e = check(&[1, 2], &env).unwrap_err().to_string();
            assert!(e.contains("VLAN 2 is not one of the run's VLANs"), "{e}");
        } else {
            let e = check(&[1], &env).unwrap_err().to_string();
            assert!(e.contains("needs root"), "{e}");
        }
    }
}
