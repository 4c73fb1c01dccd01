//! The shell part of the Machine API, written once for every backend.

use std::time::Duration;

use super::Machine;
use crate::error::{Error, Result};
use crate::interrupt::Deadline;
use crate::retry::{self, Backoff};
use crate::trace::{attr, SpanKind};
use crate::transport::shell::Reply;

/// Options of [`Machine::execute`], with upstream's defaults.
#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    /// Wait for and return the exit status.
    pub check_return: bool,
    /// Wait for and return the output.
    pub check_output: bool,
    /// Guest-side `timeout` for the command (upstream default 900 s).
    pub timeout: Option<Duration>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            check_return: true,
            check_output: true,
            timeout: Some(crate::config::DEFAULT_COMMAND_TIMEOUT),
        }
    }
}

impl ExecOptions {
    /// Defaults with another timeout.
    pub fn with_timeout(timeout: Option<Duration>) -> Self {
        ExecOptions {
            timeout,
            ..Default::default()
        }
    }
}

/// A command's output as text: the bytes themselves when they are UTF-8 (no copy: a large
/// output must not cost twice its size here), else a lossy copy.
fn output_text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends one command's output to the joined outputs; the first is moved, not copied.
fn append(joined: &mut String, out: String) {
    if joined.is_empty() {
        *joined = out;
    } else {
        joined.push_str(&out);
    }
}

/// How long the host waits beyond the guest-side timeout before it gives up on an answer:
/// the guest's `timeout` has ended the command by then and answers at once, unless the guest
/// itself is frozen (a stopped QEMU, a hung kernel).
pub(crate) const HOST_GRACE: Duration = Duration::from_secs(10);

impl Machine {
    /// Runs `command` in the guest: `(exit status, stdout)`. Upstream semantics: status -1
    /// when `check_return` is off, -2 (and no output) when `check_output` is off. The
    /// operation `execute` (a span that logs nothing, as upstream's `execute` logs nothing).
    pub fn execute(&self, command: &str, opts: ExecOptions) -> Result<(i32, String)> {
        let logger = &self.info.logger;
        let span = logger.open_span(SpanKind::Operation, "execute", None, Some(self.name()));
        logger.span_attr(span.span(), attr::OPERATION, "execute".into());
        logger.span_attr(span.span(), attr::COMMAND, command.into());
        let result = self.run_command(command, opts);
        match &result {
            Ok((status, out)) => {
                logger.span_attr(span.span(), attr::EXIT_STATUS, (*status).into());
                logger.span_attr(span.span(), attr::OUTPUT_BYTES, out.len().into());
                logger.close(&span);
            }
            Err(e) => logger.close_failed(&span, &e.to_string()),
        }
        result
    }

    /// [`Machine::execute`] without its span, for the operations built on it.
    pub(crate) fn run_command(&self, command: &str, opts: ExecOptions) -> Result<(i32, String)> {
        self.run_hook()?;
        self.execute_unhooked(command, opts)
    }

    pub(crate) fn execute_unhooked(
        &self,
        command: &str,
        opts: ExecOptions,
    ) -> Result<(i32, String)> {
        self.connect()?;
        let reply = match (opts.check_output, opts.check_return) {
            (false, _) => Reply::Nothing,
            (true, false) => Reply::OutputOnly,
            (true, true) => Reply::Full,
        };
        let deadline = Deadline::after(opts.timeout.map(|t| t + HOST_GRACE));
        let (status, out) = self.shell_execute(command, opts.timeout, reply, deadline)?;
        Ok((status, output_text(out)))
    }

    /// Runs each command; fails on the first non-zero exit. Returns the joined outputs.
    pub fn succeed(&self, commands: &[String], timeout: Option<Duration>) -> Result<String> {
        let mut output = String::new();
        for command in commands {
            let block = self.command_op("succeed", &format!("must succeed: {command}"), command);
            let (status, out) =
                block.check(self.run_command(command, ExecOptions::with_timeout(timeout)))?;
            block.attr(attr::EXIT_STATUS, status);
            block.attr(attr::OUTPUT_BYTES, out.len());
            if status != 0 {
                self.log(&format!("output: {out}"));
                return Err(block.fail_with(Error::CommandFailed {
                    machine: self.name().to_string(),
                    command: command.clone(),
                    status,
                    output: out,
                }));
            }
            block.finish();
            append(&mut output, out);
        }
        Ok(output)
    }

    /// Runs each command; fails on the first zero exit. Returns the joined outputs.
    pub fn fail(&self, commands: &[String], timeout: Option<Duration>) -> Result<String> {
        let mut output = String::new();
        for command in commands {
            let block = self.command_op("fail", &format!("must fail: {command}"), command);
            let (status, out) =
                block.check(self.run_command(command, ExecOptions::with_timeout(timeout)))?;
            block.attr(attr::EXIT_STATUS, status);
            block.attr(attr::OUTPUT_BYTES, out.len());
            if status == 0 {
                return Err(block.fail_with(Error::UnexpectedSuccess {
                    machine: self.name().to_string(),
                    command: command.clone(),
                }));
            }
            block.finish();
            append(&mut output, out);
        }
        Ok(output)
    }

    /// Retries `check` (on the command's status) until it holds; the shared loop of the
    /// `wait_*` methods.
    fn wait_for_status(
        &self,
        op: &str,
        what: &str,
        command: &str,
        timeout: Option<Duration>,
        attempt_timeout: Option<Duration>,
        want_success: bool,
    ) -> Result<String> {
        let opts = ExecOptions::with_timeout(attempt_timeout.or(timeout));
        self.wait_until(op, what, timeout, |_| {
            let (status, out) = self.run_command(command, opts)?;
            Ok(((status == 0) == want_success).then_some(out))
        })
    }

    /// Runs `attempt(last_try)` until it gives a value, as the nested block `what`, with
    /// upstream's retry pace; `WaitTimedOut` when `timeout` passes first.
    pub(crate) fn wait_until<T>(
        &self,
        op: &str,
        what: &str,
        timeout: Option<Duration>,
        attempt: impl FnMut(bool) -> Result<Option<T>>,
    ) -> Result<T> {
        let block = self.op(op, what);
        match block.check(retry::until(timeout, Backoff::default(), attempt))? {
            Ok(value) => {
                block.finish();
                Ok(value)
            }
            Err(elapsed) => Err(block.fail_with(Error::WaitTimedOut {
                machine: self.name().to_string(),
                what: what.to_string(),
                elapsed,
                timeout: timeout.unwrap_or_default(),
            })),
        }
    }

    fn command_op(&self, op: &str, msg: &str, command: &str) -> crate::log::Block<'_> {
        let block = self.op(op, msg);
        block.attr(attr::COMMAND, command);
        block
    }

    /// Retries `command` until it succeeds; returns its output.
    pub fn wait_until_succeeds(
        &self,
        command: &str,
        timeout: Option<Duration>,
        attempt_timeout: Option<Duration>,
    ) -> Result<String> {
        self.wait_for_status(
            "wait_until_succeeds",
            &format!("waiting for success: {command}"),
            command,
            timeout,
            attempt_timeout,
            true,
        )
    }

    /// Retries `command` until it fails; returns its output.
    pub fn wait_until_fails(
        &self,
        command: &str,
        timeout: Option<Duration>,
        attempt_timeout: Option<Duration>,
    ) -> Result<String> {
        self.wait_for_status(
            "wait_until_fails",
            &format!("waiting for failure: {command}"),
            command,
            timeout,
            attempt_timeout,
            false,
        )
    }

    /// Waits until `filename` exists in the guest (not quoted, as upstream).
    pub fn wait_for_file(&self, filename: &str, timeout: Option<Duration>) -> Result<()> {
        self.wait_for_status(
            "wait_for_file",
            &format!("waiting for file '{filename}'"),
            &format!("test -e {filename}"),
            timeout,
            None,
            true,
        )
        .map(drop)
    }

    /// Waits until something listens on TCP `port` at `addr`, seen from the guest.
    pub fn wait_for_open_port(
        &self,
        port: u16,
        addr: &str,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.wait_for_status(
            "wait_for_open_port",
            &format!("waiting for TCP port {port} on {addr}"),
            &format!("nc -z {addr} {port}"),
            timeout,
            None,
            true,
        )
        .map(drop)
    }

    /// Waits until nothing listens on TCP `port` at `addr`.
    pub fn wait_for_closed_port(
        &self,
        port: u16,
        addr: &str,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.wait_for_status(
            "wait_for_closed_port",
            &format!("waiting for TCP port {port} on {addr} to be closed"),
            &format!("nc -z {addr} {port}"),
            timeout,
            None,
            false,
        )
        .map(drop)
    }

    /// Waits until a UNIX socket at `addr` accepts connections.
    pub fn wait_for_open_unix_socket(
        &self,
        addr: &str,
        is_datagram: bool,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let (kind, flags) = if is_datagram {
            ("datagram", "-uU")
        } else {
            ("stream", "-U")
        };
        self.wait_for_status(
            "wait_for_open_unix_socket",
            &format!("waiting for UNIX-domain {kind} on '{addr}'"),
            &format!("nc -z {flags} {addr}"),
            timeout,
            None,
            true,
        )
        .map(drop)
    }

    /// Sleeps `secs` seconds of guest time.
    pub fn sleep(&self, secs: f64) -> Result<()> {
        let shown = if secs.fract() == 0.0 {
            format!("{}", secs as i64)
        } else {
            format!("{secs}")
        };
        self.succeed(&[format!("sleep {shown}")], None).map(drop)
    }

    /// Waits until the console has printed text that `matches` accepts.
    pub fn wait_for_console_text(
        &self,
        what: &str,
        timeout: Option<Duration>,
        matches: &mut dyn FnMut(&str) -> Result<bool>,
    ) -> Result<()> {
        let block = self.op(
            "wait_for_console_text",
            &format!("waiting for {what} to appear on console"),
        );
        let start = std::time::Instant::now();
        let outcome = block.check(
            self.console()
                .wait_for_text(Deadline::after(timeout), matches),
        )?;
        block.check(crate::console::require_match(
            outcome,
            self.name(),
            &format!("waiting for {what} to appear on console"),
            start.elapsed().as_secs_f64(),
            timeout,
            self.console(),
        ))?;
        block.finish();
        Ok(())
    }
}

impl Machine {
    /// Runs `command` for `shell_interact`: the output goes to `out` as it comes, and Ctrl-C
    /// interrupts the command in the guest, not the driver. Returns the exit status.
    pub fn interact_command(&self, command: &str, out: &mut dyn FnMut(&[u8])) -> Result<i32> {
        self.connect()?;
        self.shell.interact(&self.info, &self.console, command, out)
    }
}
