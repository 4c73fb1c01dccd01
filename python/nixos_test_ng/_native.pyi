"""The native (Rust) core of nixos-test-ng. Use it through `nixos_test_ng`."""

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, final

Timeout = float | timedelta | None

class MachineError(RuntimeError):
    """A failure that is not the test's fault: the machine or its tooling broke."""

class TestScriptError(AssertionError):
    """A failure of the test script; only the script's frames are shown."""

class RequestedAssertionFailed(TestScriptError):
    """A check the script asked for failed (`succeed`, `wait_*`, `t.assert*`)."""

class ConfigError(ValueError):
    """The command line or configuration is invalid."""

class QMPAPIError(MachineError):
    """QEMU's QMP returned an error."""

    class_name: str
    """QEMU's error class (`CommandNotFound`, `GenericError`, `DeviceNotFound`, ...)."""
    description: str
    """QEMU's description of the error."""
    transaction_id: int | None
    """Always None, as upstream's (its requests carry no id)."""

class GlobalTimeout(Exception):
    """The driver's global timeout expired: the run ends (the driver dies of SIGTERM)."""

class Terminated(Exception):
    """The driver received SIGTERM: the run ends (the driver dies of SIGTERM)."""

class SnapshotRefused(MachineError):
    """The machine cannot be snapshotted as it is configured; `reason` says why, `fix` what
    makes it possible (may be empty)."""

    reason: str
    fix: str

class Unsupported(MachineError):
    """The machine's backend cannot do this (a container has no display, no QEMU monitor,
    ...); `operation` names what was asked, `backend` the backend that lacks it."""

    operation: str
    backend: str

class NetworkConditionError(ValueError):
    """A network condition or partition given with an invalid value (nothing was sent to the
    guest); `field` names the argument, `value` the value as given."""

    field: str
    value: str

#: A network condition's value: a number in the field's unit (seconds for delay and jitter,
#: a fraction from 0 to 1 for loss, duplicate, reorder and corrupt, bits per second for
#: rate) or a string with its unit ("100ms", "5%", "1mbit").
Condition = float | str | timedelta | None

def parse_args(argv: list[str], env: dict[str, str]) -> Config | str:
    """Parse the `nixos-test-driver` command line; returns the help text for `--help`."""

def install_signal_handlers() -> None:
    """Make SIGINT/SIGTERM interrupt blocking engine calls (Python's handlers still run)."""

def interrupt_reason() -> str | None:
    """Why the run was interrupted: "interrupt", "terminate", "timeout" or None."""

def clear_interrupt() -> None:
    """Clear a SIGINT (SIGTERM and the global timeout end the run: they stay set)."""

def machine_name_from_script(script: str, kind: str) -> str:
    """The machine name the driver gives a start script (`run-<name>-vm`, or
    `run-<name>-nspawn` for kind "nspawn"; else `machine`). `kind` is any word
    `machine_kind` takes."""

@final
class MachineKind:
    """A kind of machine and its facts, as the engine defines them."""

    @property
    def name(self) -> str:
        """The engine's name ("qemu", "nspawn", "firecracker", "cloud-hypervisor"):
        `MachineHandle.kind`, `Config.machines`."""
    @property
    def spec_word(self) -> str:
        """The word of machine specs ("vm", "nspawn", "firecracker", "cloud-hypervisor")."""
    @property
    def script_suffix(self) -> str:
        """The end of the start script's name ("-vm", "-nspawn", "-firecracker",
        "-cloud-hypervisor")."""
    @property
    def python_class(self) -> str:
        """The Python class of such machines ("QemuMachine", "NspawnMachine",
        "FirecrackerMachine", "CloudHypervisorMachine")."""
    @property
    def needs_root(self) -> bool:
        """The driver must run as root."""
    @property
    def noun(self) -> str:
        """What the log calls such a machine ("VM", "container")."""
    @property
    def backend(self) -> str:
        """The backend's name ("QEMU", "systemd-nspawn", "Firecracker", "Cloud Hypervisor")."""

def machine_kinds() -> list[MachineKind]:
    """Every kind of machine."""

def machine_kind(word: str) -> MachineKind:
    """The kind a word names: its name, its spec word or an alias ("container");
    ValueError otherwise."""

def pythonize_name(name: str) -> str:
    """Upstream's `pythonize_name`: `my-box` → `my_box`, `1node` → `_node`."""

def char_to_key(c: str) -> str | None:
    """The QEMU key name for a character (upstream's `CHAR_TO_KEY`), or None."""

def tmp_dir() -> str:
    """The driver's tmp dir: `$XDG_RUNTIME_DIR`, else `$TMPDIR`, `$TEMP`, `$TMP`, `/tmp`
    (created 0700 if missing). Raises ConfigError when none is writable."""

def nspawn_machine_name(script: str) -> str | None:
    """The name in a container start script's file name (`run-<name>-nspawn`), or None."""

def qemu_start_args(monitor: Path, qmp: Path, shell: Path, allow_reboot: bool) -> list[str]:
    """The arguments the driver appends to a VM's start script for these sockets, in
    upstream's order (`-nographic` unless `DISPLAY` or `WAYLAND_DISPLAY` is set)."""

def qemu_start_env(state_dir: Path, shared_dir: Path) -> list[tuple[str, str]]:
    """`TMPDIR`, `SHARED_DIR` and `USE_TMPDIR`: what a VM's start script gets on top of the
    driver's environment."""

def read_config_file(path: Path | str) -> Config:
    """The run that generation C's `--config FILE` alone describes (its machines and VLANs),
    read by the driver's own parser. Raises ConfigError naming the file and the field."""

def boot_cache_entries(env: dict[str, str]) -> tuple[str, int, list[dict[str, Any]]]:
    """The boot cache the environment names (NIXOS_TEST_NG_BOOT_CACHE, else the default): its
    directory, size limit, and entries (most recently used first) as dicts with `key`,
    `machine`, `size`, `saved`, `last_used` (seconds since the epoch) and `inputs` (lines).
    Raises ConfigError for a bad NIXOS_TEST_NG_BOOT_CACHE_SIZE."""

def boot_cache_clear(env: dict[str, str]) -> tuple[str, int]:
    """Deletes every entry of that cache: its directory and the number deleted (OSError)."""

def agent_binary() -> bytes:
    """The guest agent (`nixos-test-ng-agent`, a static x86_64 Linux executable), built from the
    same source as this module, for the guest builder to install in a guest."""

EXIT_OK: int
"""Exit status 0: the test passed (`nixos_test_ng.exit_status.ExitStatus`)."""
EXIT_FAILED: int
"""Exit status 1: the test failed."""
EXIT_USAGE: int
"""Exit status 2: a bad command line, configuration or script."""
DEFAULT_COMMAND_TIMEOUT: int
"""Upstream's default limit in seconds for a command, a wait or a retry (900)."""
SNAPSHOTS_VAR: str
"""The variable that tells the QEMU backend the run takes snapshots (VMs then start without
the guest agent's vhost-user vsock device, which QEMU cannot save)."""
GENERAL_SYMBOLS: tuple[str, ...]
"""The names every test script sees besides its machines and VLANs, in upstream's order."""

@final
class Config:
    """A validated run description."""

    @property
    def machines(self) -> list[tuple[str, str, str]]:
        """`(name, start_script, kind)` per machine; kind is "qemu" or "nspawn"."""
    @property
    def vlans(self) -> list[int]: ...
    @property
    def global_timeout(self) -> float: ...
    @property
    def out_dir(self) -> str: ...
    @property
    def keep_machine_state(self) -> bool: ...
    @property
    def interactive(self) -> bool: ...
    @property
    def vnc(self) -> bool:
        """`--vnc`: each VM's display over VNC on 127.0.0.1 (with or without a REPL)."""
    @property
    def keep_going(self) -> bool:
        """`--keep-going`: go on after a failed subtest."""
    @property
    def skip_check(self) -> bool:
        """`--skip-check`: no name check of the script before booting."""
    @property
    def pytest_args(self) -> list[str]:
        """Arguments after the test script, for pytest."""
    @property
    def junit_xml(self) -> str | None: ...
    @property
    def test_script(self) -> str | None: ...
    @property
    def debug_hook_attach(self) -> str | None: ...
    @property
    def dump_vsocks(self) -> int | None: ...
    @property
    def log_level(self) -> str: ...
    @property
    def html_report(self) -> str | None:
        """Where the HTML report goes (`--html-report`), or None (`--no-html-report`)."""
    @property
    def warnings(self) -> list[str]: ...
    def with_reporting_from(self, env: dict[str, str]) -> Config:
        """This configuration with the XML log, OTLP exporter, trace parent, transport and boot
        cache `env` asks for (`LOGFILE`, `OTEL_*`, `TRACEPARENT`, `NIXOS_TEST_NG_TRANSPORT`,
        `NIXOS_TEST_NG_BOOT_CACHE*`) instead of its own; a bad `NIXOS_TEST_NG_TRANSPORT` or
        `NIXOS_TEST_NG_BOOT_CACHE_SIZE` raises."""
    def for_worker(self, worker: str) -> Config:
        """This configuration as worker `worker` (e.g. pytest-xdist's `gw0`) of several
        drivers running the same machines at once: its tmp dir is `<tmp>/ntng-<worker>`
        (state directories, sockets, the shared directory), its output directory
        `<out>/<worker>`, its report files `<name>-<worker>.<ext>`. A worker name that is not
        one path component raises."""
    @property
    def xml_log(self) -> str | None:
        """Upstream's XML log (`LOGFILE`), or None."""
    @property
    def worker(self) -> str | None:
        """The worker this configuration is for (`for_worker`), or None."""

@final
class LogBlock:
    """A nested log block (or a subtest); use it with `with`."""

    def __enter__(self) -> LogBlock: ...
    def fail(self, error: BaseException | str) -> None:
        """Mark the block failed without raising, as if `error` had escaped it: its span
        fails, and a subtest logs `Test "<name>" failed with error: "<error>"` now."""
    def __exit__(self, exc_type: object = None, exc: object = None, _tb: object = None) -> bool: ...

@final
class Logger:
    """The run's log (the `log` symbol of a test script)."""

    def __init__(self, color: bool = False, progress: bool = False) -> None: ...
    def start_run(self, config: Config, name: str, junit: bool = False) -> None:
        """Add the reporters `config` asks for (the XML log of LOGFILE, the OTLP exporter;
        JUnit when `junit`) and open the run's span (a child of TRACEPARENT's)."""
    def finish_run(self, failure: str | None = None) -> None:
        """Close every open span, the XML log, and flush the trace exporter."""
    def exporting(self) -> bool:
        """Whether spans are exported over OTLP."""
    def timing_summary(self) -> list[str]:
        """The lines of the end-of-run timing summary."""
    def test(self, name: str) -> LogBlock:
        """A test's span and JUnit case: `with log.test("name"): ...`."""
    def write_junit(self, path: str) -> None:
        """Write the JUnit report (when `start_run` was asked for JUnit)."""
    def log(self, message: str, attributes: dict[str, Any] | None = None) -> None:
        """Log a message; `attributes["machine"]` prefixes it with the machine's name."""
    def info(self, *args: str, **kwargs: Any) -> None: ...
    def warning(self, *args: str, **kwargs: Any) -> None: ...
    def error(self, *args: str, **kwargs: Any) -> None:
        """Log an error and mark the run failed (unlike upstream, it does not exit)."""
    def log_test_error(self, *args: str, **kwargs: Any) -> None:
        """Log a test error with the red `!!! ` prefix: the running subtest fails in JUnit;
        the run does not fail (as upstream)."""
    def log_serial(self, message: str, machine: str) -> None: ...
    def print_serial_logs(self, enable: bool) -> None: ...
    @property
    def failed(self) -> bool:
        """True once `error()` was called: the run fails although nothing escaped."""
    def nested(self, message: str, attributes: dict[str, Any] | None = None) -> LogBlock:
        """A nested block: `with log.nested("msg"): ...`."""
    def subtest(self, name: str) -> LogBlock: ...

@final
class VLan:
    """A running VLAN (a `vde_switch`)."""

    @property
    def nr(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def socket_dir(self) -> str: ...
    def partition(self, groups: list[list[Machine]]) -> None:
        """Partition this VLAN: machines in different groups cannot exchange packets on it,
        machines in one group still can (`[[a, b], [c]]`); machines in no group reach
        everyone. Replaces an earlier partition of it."""
    def heal(self) -> None:
        """Heal this VLAN's partition."""

@final
class MachineHandle:
    """An opaque reference to a machine of the engine."""

    @property
    def kind(self) -> str:
        """The kind's name ("qemu", "nspawn", "firecracker", "cloud-hypervisor"; see
        `machine_kinds()`)."""

@final
class Driver:
    """VLANs, machines, the global timer and cleanup of one run."""

    def __init__(self, config: Config, logger: Logger) -> None: ...
    def machine_handles(self) -> list[MachineHandle]: ...
    def vlans(self) -> list[VLan]: ...
    def partition(self, groups: list[list[Machine]], vlan: int = 1) -> None: ...
    def heal(self, vlan: int | None = None) -> None: ...
    def vlan_env(self) -> list[tuple[str, str]]: ...
    @property
    def tmp_dir(self) -> str: ...
    def start_all(self) -> None: ...
    def join_all(self) -> None: ...
    def snapshot_all(self, name: str) -> None: ...
    def restore_all(self, name: str) -> None: ...
    def sync_all(self) -> None: ...
    def start_timer(self) -> None:
        """Start the global timer (once; later calls do nothing)."""
    def cancel_timer(self) -> None: ...
    def timer_alive(self) -> bool:
        """True from `start_timer()` until the timer fired and ended, or was cancelled."""
    def terminate_test(self) -> None:
        """Upstream's `terminate_test()`: kill every machine, send SIGTERM to the process."""
    def cleanup(self) -> None: ...
    def write_html_report(self, path: str) -> None:
        """Write the self-contained HTML report (timeline, failure, consoles, screenshots)."""
    def create_machine(
        self, start_command: str, name: str | None = None, keep_machine_state: bool = False
    ) -> MachineHandle: ...

@final
class MachineProcess:
    """A machine's process (the start script, which execs QEMU or systemd-nspawn) with the
    members of `subprocess.Popen` that scripts use. Signals go to its whole process group."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None:
        """None while it runs; then its exit code, or minus the signal that killed it."""
    def poll(self) -> int | None: ...
    def wait(self, timeout: Timeout = None) -> int:
        """Wait for the exit (`subprocess.TimeoutExpired` after `timeout`); the returncode."""
    def send_signal(self, signal: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...

class Machine:
    """A machine of the test (subclassed as `QemuMachine`, `NspawnMachine`,
    `FirecrackerMachine` and `CloudHypervisorMachine`)."""

    def __init__(self, handle: MachineHandle) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def booted(self) -> bool: ...
    @property
    def connected(self) -> bool:
        """True once the backdoor shell answered. Set it to False after making the guest
        reboot by itself: the next command waits for a new handshake."""
    @connected.setter
    def connected(self, value: bool) -> None: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def shared_dir(self) -> Path: ...
    @property
    def out_dir(self) -> Path: ...
    @property
    def tmp_dir(self) -> Path:
        """The driver's tmp dir (which holds the state directory)."""
    @property
    def start_command(self) -> str: ...
    @property
    def full_console_log(self) -> list[str]: ...
    def _process(self) -> MachineProcess | None: ...
    def _socket_paths(self) -> tuple[Path, Path, Path]: ...
    def _shell_send(self, data: bytes) -> None: ...
    def _shell_recv(self, bufsize: int, timeout: Timeout = None) -> bytes: ...
    def _console_next(self, timeout: Timeout = None) -> str | None: ...
    def _console_unread(self) -> int: ...
    def _console_wait_closed(self, timeout: Timeout = None) -> bool: ...
    def _systemd_process(self) -> int: ...
    def _vmm_metrics(self) -> dict[str, Any]: ...
    def log_serial(self, msg: str) -> None:
        """Log a console line of the machine (`<name> # <msg>`)."""
    def cleanup_statedir(self) -> None:
        """Delete the state directory (and make it again, empty); not while it runs."""
    def _set_hook(self, hook: Callable[[], object] | None) -> None: ...
    def log(self, msg: str) -> None:
        """Log a message prefixed with the machine's name."""
    def nested(self, msg: str, attrs: dict[str, Any] | None = None) -> LogBlock: ...
    def start(self, allow_reboot: bool = False) -> None:
        """Start the machine; returns before it has booted."""
    def connect(self) -> None:
        """Wait until the guest's root shell answers (the backdoor handshake)."""
    def is_up(self) -> bool: ...
    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: Timeout = 900,
    ) -> tuple[int, str]:
        """Run a command in the guest; returns `(status, stdout)`.

        `timeout` runs the command under the guest's `timeout` (status 124 when it expires).
        Only stdout is captured; stderr goes to the console log."""
    def succeed(self, *commands: str, timeout: Timeout = None) -> str:
        """Run each command; raise `RequestedAssertionFailed` when one fails. Returns the
        concatenated output."""
    def fail(self, *commands: str, timeout: Timeout = None) -> str:
        """Run each command; raise `RequestedAssertionFailed` when one succeeds."""
    def wait_until_succeeds(
        self, command: str, timeout: Timeout = 900, attempt_timeout: Timeout = None
    ) -> str:
        """Retry `command` until it succeeds (default limit 900 s); returns its output."""
    def wait_until_fails(
        self, command: str, timeout: Timeout = 900, attempt_timeout: Timeout = None
    ) -> str:
        """Retry `command` until it fails."""
    def wait_for_file(self, filename: str, timeout: Timeout = 900) -> None: ...
    def wait_for_open_port(
        self, port: int, addr: str = "localhost", timeout: Timeout = 900
    ) -> None:
        """Wait until something listens on TCP `port` at `addr`, seen from the guest."""
    def wait_for_closed_port(
        self, port: int, addr: str = "localhost", timeout: Timeout = 900
    ) -> None: ...
    def wait_for_open_unix_socket(
        self, addr: str, is_datagram: bool = False, timeout: Timeout = 900
    ) -> None: ...
    def sleep(self, secs: float) -> None:
        """Sleep `secs` seconds of guest time."""
    def shutdown(self) -> None:
        """Power the guest off and wait until the machine has stopped."""
    def crash(self) -> None:
        """Kill QEMU through the monitor (`quit`) and wait."""
    def reboot(self) -> None:
        """Press Ctrl-Alt-Delete; needs `start(allow_reboot=True)`."""
    def switch_root(self) -> None:
        """Leave a systemd initrd that runs the backdoor for the real root: wait for
        `initrd.target`, isolate `initrd-switch-root.target`, wait for the new handshake."""
    def wait_for_shutdown(self) -> None: ...
    def release(self) -> None:
        """Kill the machine."""
    def send_monitor_command(self, command: str) -> str:
        """Send a command to the QEMU monitor; returns its answer (echo included)."""
    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command; returns its `return` value."""
    def wait_for_qmp_event(
        self, event_filter: Callable[[dict[str, Any]], bool], timeout: Timeout = 600
    ) -> dict[str, Any]: ...
    def _wait_for_console_text(
        self, what: str, matcher: Callable[[str], bool], timeout: Timeout = None
    ) -> None: ...
    def get_console_log(self) -> str:
        """The console output since the last start, read back from `console.log` in the
        state directory: it costs memory about twice the log's size while held."""
    def screenshot(self, filename: str) -> None:
        """Save the screen as PNG (`.png` appended without a `.`; in the output directory
        without a `/`)."""
    def get_screen_text(self) -> str:
        """The screen's text, by OCR (`tesseract` on the host)."""
    def get_screen_text_variants(self) -> list[str]:
        """The screen's text by OCR of the raw screen and two processed variants."""
    def _wait_for_text(
        self, what: str, matcher: Callable[[str], bool], timeout: Timeout = 900
    ) -> None: ...
    def _interact_command(self, command: str, write: Callable[[bytes], object]) -> int: ...
    def snapshot(self, name: str) -> None:
        """Save the machine's whole state as `name` (QEMU: savevm; the shared directories are
        unmounted around it; the disks are copied for a warm standby QEMU, started in the
        background). A container's snapshot is its state right after boot. Raises
        `SnapshotRefused` when the VM cannot be saved as it is configured (a 9p share the
        guest cannot unmount, such as NixOS's host store; a writable disk that is not qcow2;
        no disk to hold the state)."""
    def restore(self, name: str) -> None:
        """Bring the machine back to snapshot `name` (QEMU: by switching to the warm standby
        QEMU waiting at that snapshot, else loadvm, after which the shell resyncs; a container
        restarts on a fresh overlay)."""
    def _restart_fresh(self) -> bool: ...
    def wait_for_standby(self, timeout: Timeout = 900) -> bool:
        """Wait until the warm standby QEMU for the next `restore` is ready (it is prepared in
        the background after a snapshot and after each restore). False when there is none
        (a container, standbys off, or its start failed: restores then use loadvm) or the
        timeout passed."""
    @property
    def snapshots(self) -> list[str]:
        """The names of the snapshots taken so far."""
    def get_tty_text(self, tty: str | int) -> str:
        """The text on virtual terminal `tty` (`/dev/vcs<tty>`), folded at its width."""
    def _wait_until_tty_matches(
        self, tty: str | int, what: str, matcher: Callable[[str], bool], timeout: Timeout = 900
    ) -> None: ...
    def dump_tty_contents(self, tty: str | int) -> None:
        """Write the text of virtual terminal `tty` into the guest's journal."""
    def wait_for_x(self, timeout: Timeout = 900) -> None:
        """Wait until the X server is up (graphical target reached, its socket there)."""
    def get_window_names(self) -> list[str]:
        """The names of the X windows (`xwininfo -root -tree`)."""
    def _wait_for_window(
        self, what: str, matcher: Callable[[str], bool], timeout: Timeout = 900
    ) -> None: ...
    def block(self) -> None:
        """Cut the first VLAN NIC (`set_link virtio-net-pci.1 off`)."""
    def unblock(self) -> None: ...
    def forward_port(self, host_port: int = 8080, guest_port: int = 80) -> None: ...
    def set_network_conditions(
        self,
        vlan: int = 1,
        *,
        delay: Condition = None,
        jitter: Condition = None,
        loss: Condition = None,
        duplicate: Condition = None,
        reorder: Condition = None,
        corrupt: Condition = None,
        rate: Condition = None,
    ) -> None:
        """Set the conditions of what the machine sends on VLAN `vlan` (egress), with `tc
        qdisc netem` in the guest; replaces earlier ones there. A bare number is in seconds
        (delay, jitter), a fraction from 0 to 1 (loss, duplicate, reorder, corrupt) or bits
        per second (rate); strings carry their unit ("100ms", "5%", "1mbit"). An invalid
        value raises `NetworkConditionError` before anything is sent."""
    def clear_network_conditions(self, vlan: int | None = None) -> None:
        """Remove the network conditions on VLAN `vlan`, or on every VLAN (None)."""
    def send_key(self, key: str, delay: float | None = 0.01, log: bool = True) -> None: ...
    def send_chars(self, chars: str, delay: float | None = 0.01) -> None: ...
    def send_console(self, chars: str) -> None: ...
    def copy_from_host(self, source: str, target: str) -> None:
        """Copy a host file or directory to `target` in the machine, through the shared
        directory (the guest's `/tmp/shared`); modes are kept."""
    def copy_from_host_via_shell(self, source: str, target: str) -> None:
        """Copy a host file to `target` through the shell, base64-encoded."""
    def copy_from_machine(self, source: str, target_dir: str = "") -> None:
        """Copy a file or directory of the machine to `<output dir>/<target_dir>/`."""
    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]: ...
    def start_job(self, jobname: str, user: str | None = None) -> tuple[int, str]: ...
    def stop_job(self, jobname: str, user: str | None = None) -> tuple[int, str]: ...
    def get_unit_info(self, unit: str, user: str | None = None) -> dict[str, str]: ...
    def get_unit_property(self, unit: str, property: str, user: str | None = None) -> str: ...
    def wait_for_unit(self, unit: str, user: str | None = None, timeout: Timeout = 900) -> None:
        """Wait until `unit` is active; fail early when it failed or is inactive with no
        pending jobs (the error includes its status and journal tail)."""
    def require_unit_state(self, unit: str, require_state: str = "active") -> None: ...
