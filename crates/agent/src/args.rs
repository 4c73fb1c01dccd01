//! `nixos-test-ng-agent [--vsock-port N] [--listen unix:PATH | --listen tcp:ADDR:PORT]...
//! [--log PATH] [--no-warm-shell]`

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use agent_protocol::AGENT_PORT;

pub const USAGE: &str = "usage: nixos-test-ng-agent [--vsock-port N] \
     [--listen unix:PATH | --listen tcp:ADDR:PORT]... [--log PATH] [--no-warm-shell]";

/// A `--listen` endpoint besides vsock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (how the tests run the agent as a local process).
    Unix(PathBuf),
    /// A TCP address (the VMM stand-ins' hybrid vsock over QEMU's user-mode network). The
    /// address need not be up yet: the socket is bound with `IP_FREEBIND`.
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// The vsock port to listen on, if any.
    pub vsock_port: Option<u32>,
    pub listen: Vec<Endpoint>,
    pub log: Option<PathBuf>,
    /// Every command runs its own `bash -c` instead of a warm shell's subshell.
    pub no_warm_shell: bool,
}

fn endpoint(value: &str) -> Result<Endpoint, String> {
    if let Some(path) = value.strip_prefix("unix:").filter(|p| !p.is_empty()) {
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = value.strip_prefix("tcp:") {
        return addr.parse().map(Endpoint::Tcp).map_err(|_| {
            format!("--listen: {value:?} is not tcp:ADDR:PORT (e.g. tcp:10.0.2.15:7001)")
        });
    }
    Err(format!(
        "--listen: expected unix:PATH or tcp:ADDR:PORT, got {value:?}"
    ))
}

/// Parses the arguments after the program's name. Without `--listen` the agent listens on
/// vsock port [`AGENT_PORT`]; with it, on vsock only when `--vsock-port` is also given.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut vsock_port = None;
    let mut listen = Vec::new();
    let mut log = None;
    let mut no_warm_shell = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--vsock-port" => {
                let v = value()?;
                vsock_port = Some(
                    v.parse()
                        .map_err(|_| format!("--vsock-port: not a port number: {v:?}"))?,
                );
            }
            "--listen" => listen.push(endpoint(&value()?)?),
            "--log" => log = Some(PathBuf::from(value()?)),
            "--no-warm-shell" if inline.is_none() => no_warm_shell = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if listen.is_empty() && vsock_port.is_none() {
        vsock_port = Some(AGENT_PORT);
    }
    Ok(Args {
        vsock_port,
        listen,
        log,
        no_warm_shell,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Args, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn vsock_on_the_agent_port_by_default() {
        assert_eq!(
            parse_strs(&[]).unwrap(),
            Args {
                vsock_port: Some(AGENT_PORT),
                listen: vec![],
                log: None,
                no_warm_shell: false,
            }
        );
    }

    #[test]
    fn a_unix_listener_replaces_vsock_unless_a_port_is_given() {
        let a = parse_strs(&["--listen", "unix:/tmp/s"]).unwrap();
        assert_eq!(a.vsock_port, None);
        assert_eq!(a.listen, vec![Endpoint::Unix(PathBuf::from("/tmp/s"))]);
        let a = parse_strs(&["--listen=unix:/tmp/s", "--vsock-port", "9", "--log", "/l"]).unwrap();
        assert_eq!(a.vsock_port, Some(9));
        assert_eq!(a.log, Some(PathBuf::from("/l")));
    }

    #[test]
    fn several_listeners_of_both_kinds_in_order() {
        let a = parse_strs(&[
            "--vsock-port",
            "7001",
            "--listen",
            "tcp:10.0.2.15:7001",
            "--listen=unix:/run/a.sock",
            "--listen",
            "tcp:[::1]:0",
        ])
        .unwrap();
        assert_eq!(a.vsock_port, Some(7001));
        assert_eq!(
            a.listen,
            vec![
                Endpoint::Tcp("10.0.2.15:7001".parse().unwrap()),
                Endpoint::Unix(PathBuf::from("/run/a.sock")),
                Endpoint::Tcp("[::1]:0".parse().unwrap()),
            ]
        );
        assert_eq!(a.listen[0].to_string(), "tcp:10.0.2.15:7001");
        // a TCP listener alone replaces vsock, as a unix one does
        assert_eq!(
            parse_strs(&["--listen", "tcp:127.0.0.1:1"])
                .unwrap()
                .vsock_port,
            None
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        for bad in [
            "tcp:1",
            "tcp:10.0.2.15",
            "tcp:10.0.2.15:x",
            "tcp:host:1",
            "tcp:",
        ] {
            let e = parse_strs(&["--listen", bad]).unwrap_err();
            assert!(e.contains("tcp:ADDR:PORT") && e.contains(bad), "{e}");
        }
        let e = parse_strs(&["--listen", "vsock:1"]).unwrap_err();
        assert!(
            e.contains("unix:PATH or tcp:ADDR:PORT") && e.contains("vsock:1"),
            "{e}"
        );
        assert!(parse_strs(&["--listen", "unix:"])
            .unwrap_err()
            .contains("unix:PATH"));
        assert!(parse_strs(&["--vsock-port", "x"])
            .unwrap_err()
            .contains("not a port"));
        assert!(parse_strs(&["--log"])
            .unwrap_err()
            .contains("--log needs a value"));
        assert!(parse_strs(&["--bogus"]).unwrap_err().contains("--bogus"));
    }
}
