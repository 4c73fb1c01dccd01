//! `nixos-test-ng-agent [--vsock-port N] [--listen unix:PATH]... [--log PATH]`

use std::path::PathBuf;

use agent_protocol::AGENT_PORT;

pub const USAGE: &str =
    "usage: nixos-test-ng-agent [--vsock-port N] [--listen unix:PATH]... [--log PATH]";

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// The vsock port to listen on, if any.
    pub vsock_port: Option<u32>,
    pub unix: Vec<PathBuf>,
    pub log: Option<PathBuf>,
}

/// Parses the arguments after the program's name. Without `--listen` the agent listens on
/// vsock port [`AGENT_PORT`]; with it, on vsock only when `--vsock-port` is also given.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut vsock_port = None;
    let mut unix = Vec::new();
    let mut log = None;
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
            "--listen" => {
                let v = value()?;
                let path = v
                    .strip_prefix("unix:")
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| format!("--listen: expected unix:PATH, got {v:?}"))?;
                unix.push(PathBuf::from(path));
            }
            "--log" => log = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if unix.is_empty() && vsock_port.is_none() {
        vsock_port = Some(AGENT_PORT);
    }
    Ok(Args {
        vsock_port,
        unix,
        log,
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
                unix: vec![],
                log: None
            }
        );
    }

    #[test]
    fn a_unix_listener_replaces_vsock_unless_a_port_is_given() {
        let a = parse_strs(&["--listen", "unix:/tmp/s"]).unwrap();
        assert_eq!(a.vsock_port, None);
        assert_eq!(a.unix, vec![PathBuf::from("/tmp/s")]);
        let a = parse_strs(&["--listen=unix:/tmp/s", "--vsock-port", "9", "--log", "/l"]).unwrap();
        assert_eq!(a.vsock_port, Some(9));
        assert_eq!(a.log, Some(PathBuf::from("/l")));
    }

    #[test]
    fn bad_arguments_are_named() {
        assert!(parse_strs(&["--listen", "tcp:1"])
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
