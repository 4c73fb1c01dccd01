//! nixos-test-ng-agent: the guest side of nixos-test-ng's vsock transport. It serves the
//! protocol of the `agent_protocol` crate on every connection (vsock, TCP or unix), one thread
//! per connection. `nixos-test-ng-agent refresh …` is the first command of a guest started from
//! a saved state (`refresh.rs`); `refresh-server DIR` does the same for requests on a FIFO, from
//! a process that was running before the state was saved (`refresh_server.rs`).

mod args;
mod conn;
mod exec;
mod listen;
mod log;
mod refresh;
mod refresh_server;
mod sys;
mod tree;
mod warm;

use std::fs::OpenOptions;
use std::process::ExitCode;
use std::thread;

use listen::Listener;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("refresh") => return refresh::main(std::env::args().skip(2)),
        Some("refresh-server") => return refresh_server::main(std::env::args().skip(2)),
        _ => {}
    }
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("nixos-test-ng-agent: {message}");
            return ExitCode::from(2);
        }
    };
    warm::set_enabled(!args.no_warm_shell);
    if let Some(path) = &args.log {
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => log::init(Box::new(file)),
            Err(e) => {
                eprintln!(
                    "nixos-test-ng-agent: cannot open the log {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut listeners = Vec::new();
    if let Some(port) = args.vsock_port {
        match Listener::vsock(port) {
            Ok(l) => listeners.push((l, format!("vsock port {port}"))),
            Err(e) => return fail(format_args!("cannot listen on vsock port {port}: {e}")),
        }
    }
    for endpoint in &args.listen {
        match Listener::endpoint(endpoint) {
            Ok(l) => {
                let name = l.name(endpoint);
                listeners.push((l, name));
            }
            Err(e) => return fail(format_args!("cannot listen on {endpoint}: {e}")),
        }
    }
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|(listener, name)| {
            log::line(format_args!("listening on {name}"));
            thread::spawn(move || accept_loop(&listener, &name))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::from(1)
}

fn fail(message: std::fmt::Arguments<'_>) -> ExitCode {
    log::line(message);
    ExitCode::from(1)
}

fn accept_loop(listener: &Listener, name: &str) {
    loop {
        match listener.accept() {
            Ok((fd, peer)) => {
                let spawned = thread::Builder::new().spawn(move || conn::serve(fd, &peer));
                if let Err(e) = spawned {
                    log::line(format_args!(
                        "{name}: cannot start a connection thread: {e}"
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::line(format_args!("{name}: accept failed: {e}"));
                // EMFILE and friends: back off instead of spinning.
                thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
