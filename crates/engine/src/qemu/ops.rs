//! QEMU-only Machine operations: monitor, QMP, power and links.

use std::time::Duration;

use serde_json::Value;

use super::QemuBackend;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::machine::{ExecOptions, Machine};

/// `repr()` of a Python string, as upstream's log lines show it: single quotes unless the
/// text has a `'` and no `"`; backslash escapes for quotes, backslashes and control characters.
pub fn python_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

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

impl Machine {
    fn qemu_or_err(&self, what: &str) -> Result<&QemuBackend> {
        self.qemu().ok_or_else(|| Error::InvalidState {
            machine: self.name().to_string(),
            message: format!("{what} needs a QEMU machine"),
        })
    }

    /// Sends a command to the HMP monitor; returns its answer up to the prompt.
    pub fn send_monitor_command(&self, command: &str) -> Result<String> {
        self.run_hook()?;
        let qemu = self.qemu_or_err("send_monitor_command")?;
        let control = qemu.running(self.info())?.control(self.info())?;
        let mut monitor = control.monitor.lock().unwrap();
        monitor.send(command, Deadline::after(Some(MONITOR_TIMEOUT)))
    }

    /// Runs a QMP command.
    pub fn qmp_execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let qemu = self.qemu_or_err("QMP")?;
        let run = qemu.running(self.info()).map_err(|_| Error::InvalidState {
            machine: self.name().to_string(),
            message: "QMP API is not ready yet, is the VM ready?".to_string(),
        })?;
        run.control(self.info())?.qmp().execute(
            command,
            arguments,
            Deadline::after(Some(MONITOR_TIMEOUT)),
        )
    }

    /// Waits for a QMP event that `accept` takes; `None` timeout waits forever.
    pub fn wait_for_qmp_event(
        &self,
        timeout: Option<Duration>,
        accept: &mut dyn FnMut(&Value) -> Result<bool>,
    ) -> Result<Value> {
        let qemu = self.qemu_or_err("wait_for_qmp_event")?;
        let run = qemu.running(self.info()).map_err(|_| Error::InvalidState {
            machine: self.name().to_string(),
            message: "QMP API is not ready yet, is the VM ready?".to_string(),
        })?;
        let control = run.control(self.info())?;
        let deadline = Deadline::after(timeout);
        loop {
            match control.qmp().next_event(deadline)? {
                Some(event) if accept(&event)? => return Ok(event),
                Some(_) => {}
                None => {
                    return Err(Error::Timeout {
                        machine: self.name().to_string(),
                        what: "waiting for a QMP event".to_string(),
                    })
                }
            }
        }
    }

    /// Kills QEMU through the monitor (`quit`) and waits for it to exit.
    pub fn crash(&self) -> Result<()> {
        if !self.booted() {
            return Ok(());
        }
        self.log("forced crash");
        self.send_monitor_command("quit")?;
        self.wait_for_shutdown()
    }

    /// Presses a key (QEMU key names, or a character from upstream's map).
    pub fn send_key(&self, key: &str, delay: Option<Duration>, log: bool) -> Result<()> {
        let key = char_to_key(key).unwrap_or(key);
        let block = log.then(|| self.op("send_key", &format!("sending key '{key}'")));
        self.send_monitor_command(&format!("sendkey {key}"))?;
        if let Some(d) = delay {
            crate::retry::sleep(d)?;
        }
        if let Some(b) = block {
            b.finish();
        }
        Ok(())
    }

    /// Types `chars` key by key.
    pub fn send_chars(&self, chars: &str, delay: Option<Duration>) -> Result<()> {
        let block = self.op(
            "send_chars",
            &format!("sending keys {}", python_repr(chars)),
        );
        for c in chars.chars() {
            self.send_key(&c.to_string(), delay, false)?;
        }
        block.finish();
        Ok(())
    }

    /// Writes to the serial console (QEMU's stdin).
    pub fn send_console(&self, chars: &[u8]) -> Result<()> {
        let qemu = self.qemu_or_err("send_console")?;
        let run = qemu.running(self.info())?;
        run.process
            .write_stdin(chars)
            .map_err(|e| Error::io(format!("{}: writing to the console", self.name()), e))
    }

    /// Presses Ctrl-Alt-Delete; the next command waits for a new handshake.
    pub fn reboot(&self) -> Result<()> {
        self.send_key("ctrl-alt-delete", Some(Duration::from_millis(10)), true)?;
        self.qemu_or_err("reboot")?.disconnect();
        Ok(())
    }

    /// Leaves a systemd initrd that runs the backdoor (NixOS's `testing.initrdBackdoor`) for
    /// the real root, as upstream does: waits for `initrd.target`, isolates
    /// `initrd-switch-root.target` without waiting for an answer, then waits for the new root's
    /// backdoor handshake on the same console.
    pub fn switch_root(&self) -> Result<()> {
        let qemu = self.qemu_or_err("switch_root")?;
        self.wait_for_unit("initrd.target", None, None)?;
        self.execute(
            "systemctl isolate --no-block initrd-switch-root.target 2>/dev/null >/dev/null",
            ExecOptions {
                check_return: false,
                check_output: false,
                ..Default::default()
            },
        )?;
        qemu.disconnect();
        self.connect()
    }

    /// Cuts the first VLAN link (`virtio-net-pci.1`).
    pub fn block(&self) -> Result<()> {
        self.send_monitor_command("set_link virtio-net-pci.1 off")
            .map(drop)
    }

    /// Restores the first VLAN link.
    pub fn unblock(&self) -> Result<()> {
        self.send_monitor_command("set_link virtio-net-pci.1 on")
            .map(drop)
    }

    /// Forwards a host TCP port to a guest port on the user-mode NIC.
    pub fn forward_port(&self, host_port: u16, guest_port: u16) -> Result<()> {
        self.send_monitor_command(&format!("hostfwd_add tcp::{host_port}-:{guest_port}"))
            .map(drop)
    }

    /// The paths of the monitor, QMP and shell sockets (see [`QemuBackend::socket_paths`]).
    pub fn qemu_socket_paths(&self) -> Result<[std::path::PathBuf; 3]> {
        Ok(self
            .qemu_or_err("monitor_path, qmp_path and shell_path: each")?
            .socket_paths(self.info()))
    }
}

#[cfg(test)]
mod repr_tests {
    use super::python_repr;

    #[test]
    fn matches_python() {
        assert_eq!(python_repr("typed 42!\n"), "'typed 42!\\n'");
        assert_eq!(python_repr("it's"), "\"it's\"");
        assert_eq!(python_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(python_repr("\\\u{1}"), "'\\\\\\x01'");
    }
}
