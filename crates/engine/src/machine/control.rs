//! The operations that need a capability of the backend (a monitor, a keyboard, links,
//! port forwards, power, a serial console, a container's init, VMM metrics), written once:
//! the machine logs, runs the polling-condition hook, and asks the capability; a backend
//! without it gets `Unsupported`.

use std::time::Duration;

use serde_json::Value;

use super::{ExecOptions, Machine};
use crate::backend::Capability;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;

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

impl Machine {
    /// Sends a command to the HMP monitor; returns its answer up to the prompt.
    pub fn send_monitor_command(&self, command: &str) -> Result<String> {
        self.run_hook()?;
        let monitor = self.require(
            "send_monitor_command",
            Capability::Monitor,
            self.backend.monitor(),
        )?;
        monitor.send_monitor_command(&self.info, command)
    }

    /// Runs a QMP command.
    pub fn qmp_execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let monitor = self.require("qmp", Capability::Monitor, self.backend.monitor())?;
        monitor.qmp(&self.info, command, arguments)
    }

    /// Waits for a QMP event that `accept` takes; `None` timeout waits forever.
    pub fn wait_for_qmp_event(
        &self,
        timeout: Option<Duration>,
        accept: &mut dyn FnMut(&Value) -> Result<bool>,
    ) -> Result<Value> {
        let monitor = self.require(
            "wait_for_qmp_event",
            Capability::Monitor,
            self.backend.monitor(),
        )?;
        let deadline = Deadline::after(timeout);
        loop {
            match monitor.next_qmp_event(&self.info, deadline)? {
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

    /// The paths of the monitor, QMP and shell sockets (of the running QEMU, else of the next).
    pub fn qemu_socket_paths(&self) -> Result<[std::path::PathBuf; 3]> {
        let monitor = self.require(
            "monitor_path, qmp_path and shell_path",
            Capability::Monitor,
            self.backend.monitor(),
        )?;
        Ok(monitor.socket_paths(&self.info))
    }

    /// The VMM's own metrics, flushed now (Firecracker: `FlushMetrics`, then the last JSON
    /// object of its metrics file).
    pub fn vmm_metrics(&self) -> Result<Value> {
        let metrics = self.require(
            "vmm_metrics",
            Capability::VmmMetrics,
            self.backend.vmm_metrics(),
        )?;
        self.run_hook()?;
        metrics.vmm_metrics(&self.info)
    }

    /// Ends the machine at once (QEMU: `quit` on the monitor) and waits for it.
    pub fn crash(&self) -> Result<()> {
        if !self.booted() {
            return Ok(());
        }
        let power = self.require("crash", Capability::Power, self.backend.power())?;
        self.log("forced crash");
        self.run_hook()?;
        power.crash(&self.info)?;
        self.wait_for_shutdown()
    }

    /// Presses a key (the backend's key names, or a character from upstream's map).
    pub fn send_key(&self, key: &str, delay: Option<Duration>, log: bool) -> Result<()> {
        self.press_key("send_key", key, delay, log)
    }

    fn press_key(
        &self,
        operation: &str,
        key: &str,
        delay: Option<Duration>,
        log: bool,
    ) -> Result<()> {
        let keyboard = self.require(operation, Capability::Keyboard, self.backend.keyboard())?;
        let key = keyboard.key_name(key);
        let block = log.then(|| self.op("send_key", &format!("sending key '{key}'")));
        self.run_hook()?;
        keyboard.press(&self.info, key)?;
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
        self.require("send_chars", Capability::Keyboard, self.backend.keyboard())?;
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
        let serial = self.require(
            "send_console",
            Capability::SerialConsole,
            self.backend.serial_console(),
        )?;
        serial.send_console(&self.info, chars)
    }

    /// Presses Ctrl-Alt-Delete (on the keyboard, or by the VMM's own means when its power
    /// control has them); the next command waits for a new handshake.
    pub fn reboot(&self) -> Result<()> {
        match self.backend.power().filter(|p| p.has_reboot()) {
            Some(power) => {
                let block = self.op("send_key", "sending key 'ctrl-alt-delete'");
                self.run_hook()?;
                block.check(power.reboot(self))?;
                block.finish();
            }
            None => self.press_key(
                "reboot",
                "ctrl-alt-delete",
                Some(Duration::from_millis(10)),
                true,
            )?,
        }
        self.mark_disconnected();
        Ok(())
    }

    /// Leaves a systemd initrd that runs the backdoor (NixOS's `testing.initrdBackdoor`) for
    /// the real root, as upstream does: waits for `initrd.target`, isolates
    /// `initrd-switch-root.target` without waiting for an answer, then waits for the new root's
    /// backdoor handshake on the same console.
    pub fn switch_root(&self) -> Result<()> {
        if !self.backend.switches_root() {
            return Err(self.unsupported("switch_root", Capability::SwitchRoot));
        }
        self.wait_for_unit("initrd.target", None, None)?;
        self.execute(
            "systemctl isolate --no-block initrd-switch-root.target 2>/dev/null >/dev/null",
            ExecOptions {
                check_return: false,
                check_output: false,
                ..Default::default()
            },
        )?;
        self.mark_disconnected();
        self.connect()
    }

    /// Cuts the first VLAN link (`virtio-net-pci.1`).
    pub fn block(&self) -> Result<()> {
        self.set_link("block", false)
    }

    /// Restores the first VLAN link.
    pub fn unblock(&self) -> Result<()> {
        self.set_link("unblock", true)
    }

    fn set_link(&self, operation: &str, up: bool) -> Result<()> {
        let links = self.require(operation, Capability::Links, self.backend.links())?;
        self.run_hook()?;
        self.check_vlans(operation)?;
        links.set_link(&self.info, up)
    }

    /// Forwards a host TCP port to a guest port on the user-mode NIC.
    pub fn forward_port(&self, host_port: u16, guest_port: u16) -> Result<()> {
        let forwards = self.require(
            "forward_port",
            Capability::PortForwards,
            self.backend.port_forwards(),
        )?;
        self.run_hook()?;
        forwards.forward_port(&self.info, host_port, guest_port)
    }

    /// The pid (in the host's namespace) of the container's PID 1, systemd: upstream's
    /// `NspawnMachine.get_systemd_process`. Starts the container and waits for it to boot
    /// when needed, as upstream's first command does.
    pub fn systemd_process(&self) -> Result<u32> {
        let container = self.require(
            "get_systemd_process",
            Capability::Container,
            self.backend.container(),
        )?;
        self.connect()?;
        container.init_pid().ok_or_else(|| Error::InvalidState {
            machine: self.name().to_string(),
            message: format!("the {} stopped", self.kind().noun()),
        })
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
