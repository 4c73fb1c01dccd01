//! The exit statuses of `nixos-test-driver` and `nixos-test-ng`, upstream's where it has them.
//! The Python package's `nixos_test_ng.exit_status.ExitStatus` is built from these.
//!
//! A run ended by SIGTERM or the global timeout dies of SIGTERM, and Ctrl-C of SIGINT, as
//! upstream's driver does (a shell sees 128 plus the signal's number): no status of their own.

/// Success: the test passed, the command did what it was asked.
pub const OK: i32 = 0;
/// Failure: the test failed (an exception escaped the script, or `log.error`), `check` found
/// problems, `doctor` found something the demo needs missing, a guest build failed.
pub const FAILED: i32 = 1;
/// A bad command line, configuration or script (argparse's status for usage errors, which
/// upstream's users see).
pub const USAGE: i32 = 2;
