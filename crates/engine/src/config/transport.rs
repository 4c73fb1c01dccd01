//! `NIXOS_TEST_NG_TRANSPORT`: which transport a machine's commands take.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// The variable that forces a transport.
pub const TRANSPORT_VAR: &str = "NIXOS_TEST_NG_TRANSPORT";

/// Which transport a machine's commands take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// The guest's agent when the launch set one up, else the shell backdoor (unset).
    #[default]
    Auto,
    /// Always the shell backdoor (`backdoor`).
    Backdoor,
    /// Always the agent (`agent`): a machine whose launch set none up is an error.
    Agent,
}

impl Transport {
    /// Reads [`TRANSPORT_VAR`] from `env`; unset or empty is [`Transport::Auto`].
    pub fn from_env(env: &HashMap<String, String>) -> Result<Transport> {
        match env.get(TRANSPORT_VAR).map(|v| v.trim()) {
            None | Some("") => Ok(Transport::Auto),
            Some("backdoor") => Ok(Transport::Backdoor),
            Some("agent") => Ok(Transport::Agent),
            Some(other) => Err(Error::Config(format!(
                "{TRANSPORT_VAR}={other:?} is not a transport: use `backdoor`, `agent`, or leave it unset to use the agent when the guest has one"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Option<&str>) -> Result<Transport> {
        let env = value
            .map(|v| HashMap::from([(TRANSPORT_VAR.to_string(), v.to_string())]))
            .unwrap_or_default();
        Transport::from_env(&env)
    }

    #[test]
    fn transport_values_and_a_bad_one() {
        assert_eq!(parse(None).unwrap(), Transport::Auto);
        assert_eq!(parse(Some("")).unwrap(), Transport::Auto);
        assert_eq!(parse(Some("backdoor")).unwrap(), Transport::Backdoor);
        assert_eq!(parse(Some("agent")).unwrap(), Transport::Agent);
        let e = parse(Some("vsock")).unwrap_err().to_string();
        assert!(
            e.contains("NIXOS_TEST_NG_TRANSPORT=\"vsock\" is not a transport"),
            "{e}"
        );
    }
}
