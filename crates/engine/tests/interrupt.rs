//! The process-wide interruption flag (its own test binary: the flag is global, and once the
//! run is ending it stays set).

use ntng_engine::interrupt::{self, Reason};

#[test]
fn sigint_clears_and_sigterm_and_the_timeout_stay() {
    assert_eq!(interrupt::pending(), None);

    // Ctrl-C is reported once, then the run goes on (the REPL does).
    interrupt::raise(Reason::Interrupt);
    assert_eq!(interrupt::pending(), Some(Reason::Interrupt));
    assert!(!interrupt::ending() && interrupt::check_ending().is_ok());
    assert!(interrupt::check().is_err());
    interrupt::clear();
    assert_eq!(interrupt::pending(), None);

    // SIGTERM ends the run: clearing does not undo it, nor does a later Ctrl-C weaken it.
    interrupt::raise(Reason::Terminate);
    interrupt::clear();
    interrupt::raise(Reason::Interrupt);
    interrupt::clear();
    assert_eq!(interrupt::pending(), Some(Reason::Terminate));
    assert!(interrupt::ending() && interrupt::check_ending().is_err());
    assert!(!interrupt::timed_out());

    // The global timeout wins over SIGTERM (its own SIGTERM included).
    interrupt::raise(Reason::GlobalTimeout);
    interrupt::raise(Reason::Terminate);
    interrupt::clear();
    assert_eq!(interrupt::pending(), Some(Reason::GlobalTimeout));
    assert!(interrupt::timed_out() && interrupt::check_ending().is_err());
}
