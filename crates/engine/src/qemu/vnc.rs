//! `--vnc`: a VM's display over VNC on the loopback address only, behind a password (any
//! local user can reach a loopback port): a random one per machine, set over QMP
//! (`change-vnc-password`) on every QEMU the machine runs and said in the log. Until it is
//! set, `password=on` lets nobody in.
//!
//! QEMU picks the port itself (`-vnc 127.0.0.1:<first>,to=99`: the first free display from
//! `first`, i.e. port 5900+N), and QMP's `query-vnc` says which it got, so two QEMUs never
//! race for a port. A machine keeps its display number across restarts when it is free, and
//! a warm standby that takes over moves its VNC server to the machine's address
//! (`display-update`), so a viewer reconnects to the same address after a restore.

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

use super::Qmp;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;

/// The only address VNC listens on.
pub const HOST: &str = "127.0.0.1";
/// VNC's display 0.
const BASE_PORT: u16 = 5900;
/// The last display number QEMU may take (`to=`).
const LAST_DISPLAY: u16 = 99;
/// QMP calls about the display.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where a VM's display is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VncAddress {
    /// The TCP port on [`HOST`].
    pub port: u16,
}

impl VncAddress {
    /// The display number (port - 5900).
    pub fn display(&self) -> u16 {
        self.port.saturating_sub(BASE_PORT)
    }

    /// The log line that announces it.
    pub fn announcement(&self) -> String {
        format!("display on VNC {self} (vncviewer {HOST}::{})", self.port)
    }
}

impl fmt::Display for VncAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HOST}:{}", self.port)
    }
}

/// The QEMU arguments for a display on the first free display number from `first`.
pub fn args(first: u16) -> [String; 2] {
    let first = first.min(LAST_DISPLAY);
    [
        "-vnc".into(),
        format!("{HOST}:{first},to={LAST_DISPLAY},password=on"),
    ]
}

/// A fresh display password: VNC authentication uses at most 8 characters.
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 8];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("cannot read /dev/urandom");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The log line that gives the display's password.
pub fn password_line(password: &str) -> String {
    format!("VNC password: {password}")
}

/// Sets the password of QEMU's VNC display.
pub fn set_password(qmp: &Qmp, password: &str) -> std::result::Result<(), VncError> {
    qmp.execute(
        "change-vnc-password",
        Some(json!({ "password": password })),
        Deadline::after(Some(TIMEOUT)),
    )?;
    Ok(())
}

/// Asks QEMU where its VNC server listens.
pub fn query(qmp: &Qmp) -> std::result::Result<VncAddress, VncError> {
    let reply = qmp.execute("query-vnc", None, Deadline::after(Some(TIMEOUT)))?;
    parse_query(&reply)
}

/// Moves QEMU's VNC server to `to` (e.g. a standby taking over its machine's address).
pub fn move_to(qmp: &Qmp, to: VncAddress) -> Result<()> {
    let arguments = json!({
        "type": "vnc",
        "addresses": [{"type": "inet", "host": HOST, "port": to.port.to_string()}],
    });
    qmp.execute(
        "display-update",
        Some(arguments),
        Deadline::after(Some(TIMEOUT)),
    )
    .map(drop)
}

/// Why a VM's display could not be found or moved (logged, never a test failure).
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    /// `query-vnc` says VNC is off.
    #[error("QEMU has no VNC display (does the start script pass its arguments to QEMU?)")]
    Disabled,
    /// VNC listens elsewhere (a `-vnc` of the start script's own won).
    #[error("QEMU's VNC server listens on `{0}`, not on {HOST}")]
    ElsewhereThanLoopback(String),
    /// An answer this module does not understand.
    #[error("unexpected query-vnc answer {0}")]
    Unexpected(String),
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] Error),
}

impl super::QemuBackend {
    /// A QEMU that took the machine over (a warm standby) serves the display where the
    /// machine's was, when that port is free again; else where it is, said in the log.
    pub(super) fn take_over_display(&self, info: &crate::backend::MachineInfo, qmp: &Qmp) {
        if !info.vnc {
            return;
        }
        if let Err(e) = set_password(qmp, &self.vnc_password) {
            return info.log(&format!("no display over VNC: {e}"));
        }
        if let Some(old) = self.vnc_address() {
            match move_to(qmp, old) {
                Ok(()) => return info.log(&old.announcement()),
                Err(e) => info.log(&format!("the display cannot stay on VNC {old}: {e}")),
            }
        }
        match query(qmp) {
            Ok(address) => {
                *self.vnc.lock().unwrap() = Some(address);
                info.log(&address.announcement());
            }
            Err(e) => info.log(&format!("no display over VNC: {e}")),
        }
    }
}

fn parse_query(reply: &Value) -> std::result::Result<VncAddress, VncError> {
    if reply.get("enabled").and_then(Value::as_bool) != Some(true) {
        return Err(VncError::Disabled);
    }
    let host = reply.get("host").and_then(Value::as_str).unwrap_or("");
    if host != HOST {
        return Err(VncError::ElsewhereThanLoopback(host.to_string()));
    }
    reply
        .get("service")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u16>().ok())
        .map(|port| VncAddress { port })
        .ok_or_else(|| VncError::Unexpected(reply.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_announcement() {
        assert_eq!(args(0), ["-vnc", "127.0.0.1:0,to=99,password=on"]);
        assert_eq!(args(3), ["-vnc", "127.0.0.1:3,to=99,password=on"]);
        assert_eq!(args(500)[1], "127.0.0.1:99,to=99,password=on");
        let (p, q) = (new_password(), new_password());
        assert_eq!(p.len(), 8);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()), "{p}");
        assert_ne!(p, q);
        let a = VncAddress { port: 5901 };
        assert_eq!(a.display(), 1);
        assert_eq!(
            a.announcement(),
            "display on VNC 127.0.0.1:5901 (vncviewer 127.0.0.1::5901)"
        );
    }

    #[test]
    fn query_answers() {
        let ok = json!({"enabled": true, "host": "127.0.0.1", "service": "5903",
                        "family": "ipv4", "auth": "none", "clients": []});
        assert_eq!(parse_query(&ok).unwrap(), VncAddress { port: 5903 });
        let off = json!({"enabled": false, "clients": []});
        let e = parse_query(&off).unwrap_err().to_string();
        assert!(e.contains("no VNC display"), "{e}");
        let wide = json!({"enabled": true, "host": "0.0.0.0", "service": "5900"});
        let e = parse_query(&wide).unwrap_err().to_string();
        assert!(e.contains("0.0.0.0"), "{e}");
    }
}
