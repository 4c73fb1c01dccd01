//! `Machine`: one machine of the test. Python subclasses (`QemuMachine`, `NspawnMachine`)
//! are constructed from a `MachineHandle` handed out by the driver.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::types::PyDict;
use pyo3::types::PyString;

use ntng_engine::interrupt::Deadline;
use ntng_engine::machine::{ExecOptions, Machine as EngineMachine};
use ntng_engine::Result as EngineResult;

use crate::convert::{duration, output_str, status_and_output};
use crate::errors::{from_pyerr, to_pyerr};
use crate::logger::LogBlock;
use crate::process::MachineProcess;

/// An opaque reference to an engine machine.
#[pyclass(frozen, module = "nixos_test_ng._native")]
#[derive(Clone)]
pub struct MachineHandle {
    pub inner: Arc<EngineMachine>,
}

#[pymethods]
impl MachineHandle {
    /// The kind's name ("qemu", "nspawn", "firecracker", "cloud-hypervisor"; see
    /// `machine_kinds()`).
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }
}

#[pyclass(frozen, subclass, module = "nixos_test_ng._native")]
pub struct Machine {
    inner: Arc<EngineMachine>,
}

const DEFAULT_TIMEOUT: Duration = ntng_engine::config::DEFAULT_COMMAND_TIMEOUT;

/// A Python callable `matcher(text) -> bool` as the engine's `accept` callback: called with
/// the GIL taken again, its exceptions carried back to Python.
fn predicate(matcher: Py<PyAny>) -> impl FnMut(&str) -> EngineResult<bool> {
    move |text: &str| {
        Python::attach(|py| matcher.call1(py, (text,))?.bind(py).is_truthy()).map_err(from_pyerr)
    }
}

fn timeout_or(
    value: Option<&Bound<'_, PyAny>>,
    default: Option<Duration>,
) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(default),
        Some(v) => duration(Some(v)),
    }
}

impl Machine {
    /// Runs `f` on the engine machine with the GIL released.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&EngineMachine) -> EngineResult<T> + Send,
    ) -> PyResult<T> {
        let m = self.inner.clone();
        py.detach(move || f(&m)).map_err(to_pyerr)
    }

    /// The engine's machine (a partition's groups).
    pub(crate) fn engine(&self) -> Arc<EngineMachine> {
        self.inner.clone()
    }
}

#[pymethods]
impl Machine {
    #[new]
    fn new(handle: &MachineHandle) -> Self {
        Machine {
            inner: handle.inner.clone(),
        }
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let class = slf.get_type().name()?;
        Ok(format!("<{class} '{}'>", slf.get().inner.name()))
    }

    /// The machine's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// True once started (the process runs).
    #[getter]
    fn booted(&self) -> bool {
        self.inner.booted()
    }

    /// True once the backdoor shell answered. Setting it to False makes the next command
    /// wait for a new handshake (after the script made the guest reboot by itself).
    #[getter]
    fn connected(&self) -> bool {
        self.inner.connected()
    }

    #[setter]
    fn set_connected(&self, value: bool) -> PyResult<()> {
        match (value, self.inner.connected()) {
            (false, _) => {
                self.inner.mark_disconnected();
                Ok(())
            }
            (true, true) => Ok(()),
            (true, false) => Err(pyo3::exceptions::PyValueError::new_err(
                "`connected` can only be set to False (call connect() to wait for the shell)",
            )),
        }
    }

    /// The pid of the machine's process (QEMU), or None.
    #[getter]
    fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// `<tmp>/vm-state-<name>`.
    #[getter]
    fn state_dir(&self) -> PathBuf {
        self.inner.info().state_dir.clone()
    }

    /// The host side of the guest's `/tmp/shared`.
    #[getter]
    fn shared_dir(&self) -> PathBuf {
        self.inner.info().shared_dir.clone()
    }

    /// The output directory.
    #[getter]
    fn out_dir(&self) -> PathBuf {
        self.inner.info().out_dir.clone()
    }

    /// The driver's tmp dir (which holds the state directory).
    #[getter]
    fn tmp_dir(&self) -> PathBuf {
        self.inner.info().tmp_dir().to_path_buf()
    }

    /// The start script or command.
    #[getter]
    fn start_command(&self) -> String {
        self.inner.start_command().to_string()
    }

    /// Every console line since the last start (read back from `console.log`, as
    /// `get_console_log`).
    #[getter]
    fn full_console_log(&self) -> Vec<String> {
        self.inner
            .console_log()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The machine's process (None before the first start; a VM keeps its last one).
    fn _process(&self) -> Option<MachineProcess> {
        self.inner.process().map(MachineProcess::new)
    }

    /// The monitor, QMP and shell socket paths of a VM.
    fn _socket_paths(&self) -> PyResult<(PathBuf, PathBuf, PathBuf)> {
        let [monitor, qmp, shell] = self.inner.qemu_socket_paths().map_err(to_pyerr)?;
        Ok((monitor, qmp, shell))
    }

    /// Writes raw bytes to the backdoor shell.
    fn _shell_send(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<()> {
        self.call(py, move |m| m.send_to_shell(&data))
    }

    /// Reads up to `bufsize` raw bytes from the backdoor shell (b"" at the end or timeout).
    #[pyo3(signature = (bufsize, timeout=None))]
    fn _shell_recv<'py>(
        &self,
        py: Python<'py>,
        bufsize: usize,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let deadline = Deadline::after(duration(timeout)?);
        let data = self.call(py, move |m| m.recv_from_shell(bufsize, deadline))?;
        Ok(PyBytes::new(py, &data))
    }

    /// The next console line no wait consumed yet, waiting up to `timeout` (None: no limit);
    /// None when none came (or the console closed).
    #[pyo3(signature = (timeout=None))]
    fn _console_next(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<String>> {
        let deadline = Deadline::after(duration(timeout)?);
        self.call(py, move |m| m.console().next_unread(deadline))
    }

    /// How many console lines no wait consumed yet.
    fn _console_unread(&self) -> usize {
        self.inner.console().unread_count()
    }

    /// Waits up to `timeout` for the console reader to end; true when it has.
    #[pyo3(signature = (timeout=None))]
    fn _console_wait_closed(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let deadline = Deadline::after(duration(timeout)?);
        self.call(py, move |m| m.console().wait_closed(deadline))
    }

    /// The pid of a container's PID 1 (starting it and waiting for it to boot if needed).
    fn _systemd_process(&self, py: Python<'_>) -> PyResult<u32> {
        self.call(py, |m| m.systemd_process())
    }

    /// The VMM's metrics, flushed now (Firecracker only), as a dict.
    fn _vmm_metrics(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let v = self.call(py, |m| m.vmm_metrics())?;
        from_json(py, &v)
    }

    /// Logs a console line of the machine (`<name> # <msg>`).
    fn log_serial(&self, msg: &str) {
        self.inner.log_serial(msg);
    }

    /// Deletes the state directory (and makes it again, empty); not while the machine runs.
    fn cleanup_statedir(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.cleanup_state_dir())
    }

    /// Sets (or clears) the callable run before every command (polling conditions).
    fn _set_hook(&self, hook: Option<Py<PyAny>>) {
        let hook = hook.map(|h| {
            let h: ntng_engine::machine::Hook =
                Arc::new(move || Python::attach(|py| h.call0(py).map(drop).map_err(from_pyerr)));
            h
        });
        self.inner.set_hook(hook);
    }

    /// Logs a message prefixed with the machine's name.
    fn log(&self, msg: &str) {
        self.inner.log(msg);
    }

    /// A nested log block prefixed with the machine's name.
    #[pyo3(signature = (msg, attrs=None))]
    fn nested(&self, msg: &str, attrs: Option<&Bound<'_, PyDict>>) -> PyResult<LogBlock> {
        let _ = attrs;
        Ok(LogBlock::for_machine(
            self.inner.info().logger.clone(),
            msg,
            self.inner.name(),
        ))
    }

    /// Starts the machine; returns before it has booted.
    #[pyo3(signature = (allow_reboot=false))]
    fn start(&self, py: Python<'_>, allow_reboot: bool) -> PyResult<()> {
        self.call(py, move |m| m.start(allow_reboot))
    }

    /// Waits until the guest's root shell is reachable.
    fn connect(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.connect())
    }

    /// True when started and connected.
    fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    /// Runs a command; returns `(status, stdout)`.
    #[pyo3(signature = (command, check_return=true, check_output=true, timeout=None))]
    fn execute<'py>(
        &self,
        py: Python<'py>,
        command: String,
        check_return: bool,
        check_output: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(i32, Bound<'py, PyString>)> {
        let opts = ExecOptions {
            check_return,
            check_output,
            timeout: timeout_or(timeout, Some(DEFAULT_TIMEOUT))?,
        };
        status_and_output(py, self.call(py, move |m| m.execute(&command, opts))?)
    }

    /// Runs each command; raises when one fails. Returns the joined output.
    #[pyo3(signature = (*commands, timeout=None))]
    fn succeed<'py>(
        &self,
        py: Python<'py>,
        commands: Vec<String>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyString>> {
        let t = duration(timeout)?;
        output_str(py, self.call(py, move |m| m.succeed(&commands, t))?)
    }

    /// Runs each command; raises when one succeeds.
    #[pyo3(signature = (*commands, timeout=None))]
    fn fail<'py>(
        &self,
        py: Python<'py>,
        commands: Vec<String>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyString>> {
        let t = duration(timeout)?;
        output_str(py, self.call(py, move |m| m.fail(&commands, t))?)
    }

    /// Retries `command` until it succeeds.
    #[pyo3(signature = (command, timeout=None, attempt_timeout=None))]
    fn wait_until_succeeds<'py>(
        &self,
        py: Python<'py>,
        command: String,
        timeout: Option<&Bound<'_, PyAny>>,
        attempt_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyString>> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        let a = duration(attempt_timeout)?;
        output_str(
            py,
            self.call(py, move |m| m.wait_until_succeeds(&command, t, a))?,
        )
    }

    /// Retries `command` until it fails.
    #[pyo3(signature = (command, timeout=None, attempt_timeout=None))]
    fn wait_until_fails<'py>(
        &self,
        py: Python<'py>,
        command: String,
        timeout: Option<&Bound<'_, PyAny>>,
        attempt_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyString>> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        let a = duration(attempt_timeout)?;
        output_str(
            py,
            self.call(py, move |m| m.wait_until_fails(&command, t, a))?,
        )
    }

    /// Waits until a file exists in the guest.
    #[pyo3(signature = (filename, timeout=None))]
    fn wait_for_file(
        &self,
        py: Python<'_>,
        filename: String,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        self.call(py, move |m| m.wait_for_file(&filename, t))
    }

    /// Waits until a TCP port is open (seen from the guest).
    #[pyo3(signature = (port, addr="localhost".to_string(), timeout=None))]
    fn wait_for_open_port(
        &self,
        py: Python<'_>,
        port: u16,
        addr: String,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        self.call(py, move |m| m.wait_for_open_port(port, &addr, t))
    }

    /// Waits until a TCP port is closed.
    #[pyo3(signature = (port, addr="localhost".to_string(), timeout=None))]
    fn wait_for_closed_port(
        &self,
        py: Python<'_>,
        port: u16,
        addr: String,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        self.call(py, move |m| m.wait_for_closed_port(port, &addr, t))
    }

    /// Waits until a UNIX socket accepts connections.
    #[pyo3(signature = (addr, is_datagram=false, timeout=None))]
    fn wait_for_open_unix_socket(
        &self,
        py: Python<'_>,
        addr: String,
        is_datagram: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        self.call(py, move |m| {
            m.wait_for_open_unix_socket(&addr, is_datagram, t)
        })
    }

    /// Sleeps in guest time.
    fn sleep(&self, py: Python<'_>, secs: f64) -> PyResult<()> {
        self.call(py, move |m| m.sleep(secs))
    }

    /// Powers the guest off and waits for the machine to stop.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.shutdown())
    }

    /// Kills QEMU through the monitor and waits.
    fn crash(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.crash())
    }

    /// Presses Ctrl-Alt-Delete (needs `start(allow_reboot=True)`).
    fn reboot(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.reboot())
    }

    /// Leaves a systemd initrd with a backdoor for the real root (upstream's `switch_root`).
    fn switch_root(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.switch_root())
    }

    /// Waits until the machine has stopped.
    fn wait_for_shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.wait_for_shutdown())
    }

    /// Kills the machine.
    fn release(&self, py: Python<'_>) {
        let m = self.inner.clone();
        py.detach(move || m.release());
    }

    /// Sends a command to the QEMU monitor; returns its answer.
    fn send_monitor_command(&self, py: Python<'_>, command: String) -> PyResult<String> {
        self.call(py, move |m| m.send_monitor_command(&command))
    }

    /// Runs a QMP command; returns its result.
    #[pyo3(signature = (command, arguments=None))]
    fn qmp(
        &self,
        py: Python<'_>,
        command: String,
        arguments: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let args = match arguments {
            Some(a) if !a.is_none() => Some(to_json(a)?),
            _ => None,
        };
        let v = self.call(py, move |m| m.qmp_execute(&command, args))?;
        from_json(py, &v)
    }

    /// Waits for a QMP event for which `event_filter(event)` is true.
    #[pyo3(signature = (event_filter, timeout=None))]
    fn wait_for_qmp_event(
        &self,
        py: Python<'_>,
        event_filter: Py<PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let t = timeout_or(timeout, Some(Duration::from_secs(600)))?;
        let m = self.inner.clone();
        let v = py
            .detach(move || {
                m.wait_for_qmp_event(t, &mut |event| {
                    Python::attach(|py| {
                        let e = from_json(py, event)?;
                        event_filter.call1(py, (e,))?.bind(py).is_truthy()
                    })
                    .map_err(from_pyerr)
                })
            })
            .map_err(to_pyerr)?;
        from_json(py, &v)
    }

    /// Waits until `matcher(accumulated_console_text)` is true; `what` names it in the log.
    #[pyo3(signature = (what, matcher, timeout=None))]
    fn _wait_for_console_text(
        &self,
        py: Python<'_>,
        what: String,
        matcher: Py<PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = duration(timeout)?;
        let m = self.inner.clone();
        py.detach(move || m.wait_for_console_text(&what, t, &mut predicate(matcher)))
            .map_err(to_pyerr)
    }

    /// Saves the screen as PNG (`.png` appended without a `.`; in the output directory
    /// without a `/`).
    fn screenshot(&self, py: Python<'_>, filename: String) -> PyResult<()> {
        self.call(py, |m| m.screenshot(&filename).map(drop))
    }

    /// The screen's text, by OCR.
    fn get_screen_text(&self, py: Python<'_>) -> PyResult<String> {
        self.call(py, |m| m.get_screen_text())
    }

    /// The screen's text by OCR of the raw screen and two processed variants.
    fn get_screen_text_variants(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.call(py, |m| m.get_screen_text_variants())
    }

    #[pyo3(signature = (what, matcher, timeout=None))]
    fn _wait_for_text(
        &self,
        py: Python<'_>,
        what: String,
        matcher: Py<PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        let m = self.inner.clone();
        py.detach(move || m.wait_for_text(&what, t, &mut predicate(matcher)))
            .map_err(to_pyerr)
    }

    /// The text on virtual terminal `tty` (`/dev/vcs<tty>`), folded at its width.
    fn get_tty_text(&self, py: Python<'_>, tty: &Bound<'_, PyAny>) -> PyResult<String> {
        let tty = tty.str()?.to_string();
        self.call(py, |m| m.get_tty_text(&tty))
    }

    #[pyo3(signature = (tty, what, matcher, timeout=None))]
    fn _wait_until_tty_matches(
        &self,
        py: Python<'_>,
        tty: &Bound<'_, PyAny>,
        what: String,
        matcher: Py<PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        let tty = tty.str()?.to_string();
        let m = self.inner.clone();
        py.detach(move || m.wait_until_tty_matches(&tty, &what, t, &mut predicate(matcher)))
            .map_err(to_pyerr)
    }

    /// Writes the text of virtual terminal `tty` into the guest's journal.
    fn dump_tty_contents(&self, py: Python<'_>, tty: &Bound<'_, PyAny>) -> PyResult<()> {
        let tty = tty.str()?.to_string();
        self.call(py, |m| m.dump_tty_contents(&tty))
    }

    /// Waits until the X server is up.
    #[pyo3(signature = (timeout=None))]
    fn wait_for_x(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        self.call(py, move |m| m.wait_for_x(t))
    }

    /// The names of the X windows.
    fn get_window_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.call(py, |m| m.get_window_names())
    }

    #[pyo3(signature = (what, matcher, timeout=None))]
    fn _wait_for_window(
        &self,
        py: Python<'_>,
        what: String,
        matcher: Py<PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        let m = self.inner.clone();
        py.detach(move || m.wait_for_window(&what, t, &mut predicate(matcher)))
            .map_err(to_pyerr)
    }

    /// Runs one command of `shell_interact`; `write(bytes)` gets the output as it comes.
    fn _interact_command(
        &self,
        py: Python<'_>,
        command: String,
        write: Py<PyAny>,
    ) -> PyResult<i32> {
        let m = self.inner.clone();
        py.detach(move || {
            m.interact_command(&command, &mut |chunk: &[u8]| {
                // A failed write (a Ctrl-C raised in the callback) must not end the command:
                // the engine forwards Ctrl-C to the guest.
                let _ = Python::attach(|py| write.call1(py, (PyBytes::new(py, chunk),)));
            })
        })
        .map_err(to_pyerr)
    }

    /// Saves the machine's state as `name`.
    fn snapshot(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.call(py, move |m| m.snapshot(&name))
    }

    /// Brings the machine back to snapshot `name`.
    fn restore(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.call(py, move |m| m.restore(&name))
    }

    /// Kills the machine and boots it again on a fresh state directory (kept with
    /// `--keep-machine-state`: then True); the pytest plugin's isolation without snapshots.
    fn _restart_fresh(&self, py: Python<'_>) -> PyResult<bool> {
        self.call(py, |m| m.restart_fresh())
    }

    /// Waits until the warm standby for the next restore is ready; False when there is none.
    #[pyo3(signature = (timeout=None))]
    fn wait_for_standby(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        self.call(py, move |m| m.wait_for_standby(t))
    }

    /// The names of the snapshots taken so far.
    #[getter]
    fn snapshots(&self) -> Vec<String> {
        self.inner.snapshot_names()
    }

    /// The console output since the last start, read back from `console.log` in the state
    /// directory: it costs memory about twice the log's size while the caller holds it.
    fn get_console_log(&self) -> String {
        self.inner.console_log()
    }

    /// Cuts the first VLAN NIC.
    fn block(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.block())
    }

    /// Restores the first VLAN NIC.
    fn unblock(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |m| m.unblock())
    }

    /// Sets the conditions of what the machine sends on VLAN `vlan` (egress), with `tc
    /// qdisc netem` in the guest; replaces earlier ones there. A bare number is in seconds
    /// (delay, jitter), a fraction from 0 to 1 (loss, duplicate, reorder, corrupt) or bits
    /// per second (rate); strings carry their unit ("100ms", "5%", "1mbit").
    #[pyo3(signature = (vlan=1, *, delay=None, jitter=None, loss=None, duplicate=None, reorder=None, corrupt=None, rate=None))]
    #[allow(clippy::too_many_arguments)]
    fn set_network_conditions(
        &self,
        py: Python<'_>,
        vlan: i64,
        delay: Option<&Bound<'_, PyAny>>,
        jitter: Option<&Bound<'_, PyAny>>,
        loss: Option<&Bound<'_, PyAny>>,
        duplicate: Option<&Bound<'_, PyAny>>,
        reorder: Option<&Bound<'_, PyAny>>,
        corrupt: Option<&Bound<'_, PyAny>>,
        rate: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let input =
            crate::netem::conditions(delay, jitter, loss, duplicate, reorder, corrupt, rate)?;
        self.call(py, move |m| {
            m.set_network_conditions(vlan, &input).map(drop)
        })
    }

    /// Removes the network conditions on VLAN `vlan`, or on every VLAN (None).
    #[pyo3(signature = (vlan=None))]
    fn clear_network_conditions(&self, py: Python<'_>, vlan: Option<i64>) -> PyResult<()> {
        self.call(py, move |m| m.clear_network_conditions(vlan))
    }

    /// Forwards host TCP `host_port` to guest `guest_port`.
    #[pyo3(signature = (host_port=8080, guest_port=80))]
    fn forward_port(&self, py: Python<'_>, host_port: u16, guest_port: u16) -> PyResult<()> {
        self.call(py, move |m| m.forward_port(host_port, guest_port))
    }

    /// Presses a key.
    #[pyo3(signature = (key, delay=Some(0.01), log=true))]
    fn send_key(&self, py: Python<'_>, key: String, delay: Option<f64>, log: bool) -> PyResult<()> {
        let d = delay.map(Duration::from_secs_f64);
        self.call(py, move |m| m.send_key(&key, d, log))
    }

    /// Types characters.
    #[pyo3(signature = (chars, delay=Some(0.01)))]
    fn send_chars(&self, py: Python<'_>, chars: String, delay: Option<f64>) -> PyResult<()> {
        let d = delay.map(Duration::from_secs_f64);
        self.call(py, move |m| m.send_chars(&chars, d))
    }

    /// Writes to the serial console.
    fn send_console(&self, py: Python<'_>, chars: String) -> PyResult<()> {
        self.call(py, move |m| m.send_console(chars.as_bytes()))
    }

    /// Copies a host file or directory to `target` in the machine (through the shared dir).
    fn copy_from_host(
        &self,
        py: Python<'_>,
        source: std::path::PathBuf,
        target: String,
    ) -> PyResult<()> {
        self.call(py, move |m| m.copy_from_host(&source, &target))
    }

    /// Copies a host file to `target` through the shell (base64).
    fn copy_from_host_via_shell(
        &self,
        py: Python<'_>,
        source: std::path::PathBuf,
        target: String,
    ) -> PyResult<()> {
        self.call(py, move |m| m.copy_from_host_via_shell(&source, &target))
    }

    /// Copies a file or directory from the machine into the output directory.
    #[pyo3(signature = (source, target_dir=String::new()))]
    fn copy_from_machine(
        &self,
        py: Python<'_>,
        source: String,
        target_dir: String,
    ) -> PyResult<()> {
        self.call(py, move |m| {
            m.copy_from_machine(&source, &target_dir).map(drop)
        })
    }

    /// `systemctl <q>` (as `user` when given); returns `(status, output)`.
    #[pyo3(signature = (q, user=None))]
    fn systemctl(
        &self,
        py: Python<'_>,
        q: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        self.call(py, move |m| m.systemctl(&q, user.as_deref()))
    }

    /// `systemctl start <jobname>`.
    #[pyo3(signature = (jobname, user=None))]
    fn start_job(
        &self,
        py: Python<'_>,
        jobname: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        self.call(py, move |m| {
            m.systemctl(&format!("start {jobname}"), user.as_deref())
        })
    }

    /// `systemctl stop <jobname>`.
    #[pyo3(signature = (jobname, user=None))]
    fn stop_job(
        &self,
        py: Python<'_>,
        jobname: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        self.call(py, move |m| {
            m.systemctl(&format!("stop {jobname}"), user.as_deref())
        })
    }

    /// All properties of a unit.
    #[pyo3(signature = (unit, user=None))]
    fn get_unit_info(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
    ) -> PyResult<std::collections::BTreeMap<String, String>> {
        self.call(py, move |m| m.get_unit_info(&unit, user.as_deref()))
    }

    /// One property of a unit.
    #[pyo3(signature = (unit, property, user=None))]
    fn get_unit_property(
        &self,
        py: Python<'_>,
        unit: String,
        property: String,
        user: Option<String>,
    ) -> PyResult<String> {
        self.call(py, move |m| {
            m.get_unit_property(&unit, &property, user.as_deref())
        })
    }

    /// Waits until a unit is active.
    #[pyo3(signature = (unit, user=None, timeout=None))]
    fn wait_for_unit(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_or(timeout, Some(DEFAULT_TIMEOUT))?;
        self.call(py, move |m| m.wait_for_unit(&unit, user.as_deref(), t))
    }

    /// Fails unless a unit is in `require_state`.
    #[pyo3(signature = (unit, require_state="active".to_string()))]
    fn require_unit_state(
        &self,
        py: Python<'_>,
        unit: String,
        require_state: String,
    ) -> PyResult<()> {
        self.call(py, move |m| m.require_unit_state(&unit, &require_state))
    }
}

fn to_json(v: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let json = v.py().import("json")?;
    let text: String = json.call_method1("dumps", (v,))?.extract()?;
    serde_json::from_str(&text).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

fn from_json(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let json = py.import("json")?;
    Ok(json.call_method1("loads", (v.to_string(),))?.unbind())
}
