//! QEMU's capabilities: the HMP monitor and QMP, the keyboard (`sendkey`), links
//! (`set_link`), host port forwards (`hostfwd_add`), power (`quit`), the serial console
//! (QEMU's stdin) and the screen (`screendump`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::QemuBackend;
use crate::backend::{
    Keyboard, Links, MachineInfo, Monitor, PortForwards, Power, Screen, SerialConsole,
};
use crate::error::{Error, Result};
use crate::interrupt::Deadline;

/// Upstream's `CHAR_TO_KEY`: characters that need a QEMU key name.
pub fn char_to_key(c: &str) -> Option<&'static str> {
    Some(match c {
        "A" => "shift-a",
        "B" => "shift-b",
        "C" => "shift-c",
        "D" => "shift-d",
        "E" => "shift-e",
        "F" => "shift-f",
        "G" => "shift-g",
        "H" => "shift-h",
        "I" => "shift-i",
        "J" => "shift-j",
        "K" => "shift-k",
        "L" => "shift-l",
        "M" => "shift-m",
        "N" => "shift-n",
        "O" => "shift-o",
        "P" => "shift-p",
        "Q" => "shift-q",
        "R" => "shift-r",
        "S" => "shift-s",
        "T" => "shift-t",
        "U" => "shift-u",
        "V" => "shift-v",
        "W" => "shift-w",
        "X" => "shift-x",
        "Y" => "shift-y",
        "Z" => "shift-z",
        "\n" => "ret",
        " " => "spc",
        "-" => "0x0C",
        "_" => "shift-0x0C",
        "=" => "0x0D",
        "+" => "shift-0x0D",
        "[" => "0x1A",
        "{" => "shift-0x1A",
        "]" => "0x1B",
        "}" => "shift-0x1B",
        ";" => "0x27",
        ":" => "shift-0x27",
        "'" => "0x28",
        "\"" => "shift-0x28",
        "`" => "0x29",
        "~" => "shift-0x29",
        "\\" => "0x2B",
        "|" => "shift-0x2B",
        "," => "0x33",
        "<" => "shift-0x33",
        "." => "0x34",
        ">" => "shift-0x34",
        "/" => "0x35",
        "?" => "shift-0x35",
        "!" => "shift-0x02",
        "@" => "shift-0x03",
        "#" => "shift-0x04",
        "$" => "shift-0x05",
        "%" => "shift-0x06",
        "^" => "shift-0x07",
        "&" => "shift-0x08",
        "*" => "shift-0x09",
        "(" => "shift-0x0A",
        ")" => "shift-0x0B",
        _ => return None,
    })
}

const MONITOR_TIMEOUT: Duration = Duration::from_secs(300);

impl QemuBackend {
    /// The running QEMU for QMP, or upstream's error.
    fn qmp_running(&self, info: &MachineInfo) -> Result<std::sync::Arc<super::Running>> {
        self.running(info).map_err(|_| Error::InvalidState {
            machine: info.name.clone(),
            message: "QMP API is not ready yet, is the VM ready?".to_string(),
        })
    }
}

impl Monitor for QemuBackend {
    fn send_monitor_command(&self, info: &MachineInfo, command: &str) -> Result<String> {
        let control = self.running(info)?.control(info)?;
        let mut monitor = control.monitor.lock().unwrap();
        monitor.send(command, Deadline::after(Some(MONITOR_TIMEOUT)))
    }

    fn qmp(&self, info: &MachineInfo, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.qmp_running(info)?.control(info)?.qmp().execute(
            command,
            arguments,
            Deadline::after(Some(MONITOR_TIMEOUT)),
        )
    }

    fn next_qmp_event(&self, info: &MachineInfo, deadline: Deadline) -> Result<Option<Value>> {
        self.qmp_running(info)?
            .control(info)?
            .qmp()
            .next_event(deadline)
    }

    fn socket_paths(&self, info: &MachineInfo) -> [PathBuf; 3] {
        QemuBackend::socket_paths(self, info)
    }
}

impl Keyboard for QemuBackend {
    fn key_name<'k>(&self, key: &'k str) -> &'k str {
        char_to_key(key).unwrap_or(key)
    }

    fn press(&self, info: &MachineInfo, key: &str) -> Result<()> {
        self.send_monitor_command(info, &format!("sendkey {key}"))
            .map(drop)
    }
}

impl Links for QemuBackend {
    fn set_link(&self, info: &MachineInfo, up: bool) -> Result<()> {
        let state = if up { "on" } else { "off" };
        self.send_monitor_command(info, &format!("set_link virtio-net-pci.1 {state}"))
            .map(drop)
    }
}

impl PortForwards for QemuBackend {
    fn forward_port(&self, info: &MachineInfo, host_port: u16, guest_port: u16) -> Result<()> {
        self.send_monitor_command(info, &format!("hostfwd_add tcp::{host_port}-:{guest_port}"))
            .map(drop)
    }
}

impl Power for QemuBackend {
    fn crash(&self, info: &MachineInfo) -> Result<()> {
        self.send_monitor_command(info, "quit").map(drop)
    }
}

impl SerialConsole for QemuBackend {
    fn send_console(&self, info: &MachineInfo, data: &[u8]) -> Result<()> {
        self.running(info)?
            .process
            .write_stdin(data)
            .map_err(|e| Error::io(format!("{}: writing to the console", info.name), e))
    }
}

impl Screen for QemuBackend {
    /// QMP `screendump` of the primary display.
    fn screen_dump(&self, info: &MachineInfo, path: &Path, format: &str) -> Result<()> {
        let mut args = json!({ "filename": path.display().to_string() });
        if format != "ppm" {
            args["format"] = json!(format);
        }
        Monitor::qmp(self, info, "screendump", Some(args)).map(drop)
    }
}
