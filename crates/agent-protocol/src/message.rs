//! The JSON bodies of the control frames. Optional fields may be left out on the wire.

use serde::{Deserialize, Serialize};

/// EXEC: run `bash -c command` in a new session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub command: String,
    /// Kill the command's process group after this long; EXIT then has status 124.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Feed stdin from STDIN frames (else stdin is /dev/null).
    #[serde(default)]
    pub stdin: bool,
}

/// SIGNAL: a signal number for the running command's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub signal: i32,
}

/// PUT: the tree that follows is written at `path` (absolute in the guest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub path: String,
}

/// GET: send the tree at `path` (absolute in the guest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    pub path: String,
}

/// What a tree entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// ENTRY: one member of a tree. Parents come before their children; a file entry is
/// followed by DATA frames carrying exactly `size` bytes in all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the tree's root, "" for the root itself; see
    /// [`crate::validate_relative_path`].
    pub path: String,
    pub kind: EntryKind,
    /// The permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The file's length (0 for directories and symlinks).
    #[serde(default)]
    pub size: u64,
    /// The symlink's target, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// HELLO: the agent's first frame on a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`crate::AGENT_NAME`].
    pub agent: String,
    /// The agent's package version.
    pub version: String,
    /// [`crate::PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    pub pid: u32,
    /// The guest kernel's boot id (`/proc/sys/kernel/random/boot_id`): tells the host whether
    /// the agent answering after a reboot is the new boot's or still the old one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// EXIT: the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code; 128+signal if a signal ended it; 124 if it timed out.
    pub status: i32,
    /// The signal that ended it, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
}

/// ERROR: the request failed; the connection stays usable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
}

/// PONG: the guest's clocks when it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// CLOCK_REALTIME in nanoseconds since the epoch.
    pub realtime_ns: u64,
    /// CLOCK_MONOTONIC in nanoseconds.
    pub monotonic_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_may_be_left_out() {
        let exec: Exec = serde_json::from_str(r#"{"command": "true"}"#).unwrap();
        assert_eq!(
            exec,
            Exec {
                command: "true".into(),
                timeout_ms: None,
                stdin: false
            }
        );
        let entry: Entry =
            serde_json::from_str(r#"{"path": "", "kind": "dir", "mode": 493, "uid": 0, "gid": 0}"#)
                .unwrap();
        assert_eq!(entry.size, 0);
        assert_eq!(entry.target, None);
    }

    #[test]
    fn entry_kinds_are_lowercase_words() {
        let entry = Entry {
            path: "a/l".into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            uid: 1,
            gid: 2,
            size: 0,
            target: Some("/etc".into()),
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains(r#""kind":"symlink""#), "{json}");
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), entry);
    }
}
