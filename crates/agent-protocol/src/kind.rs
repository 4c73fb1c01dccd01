use crate::FrameError;

/// A frame's kind: its first byte. Host→agent kinds are below 0x10, tree kinds (both
/// directions) 0x10..0x80, agent→host kinds from 0x80.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// JSON [`crate::Exec`]: run a command.
    Exec = 0x01,
    /// Raw bytes for the running command's stdin; an empty body closes it.
    Stdin = 0x02,
    /// JSON [`crate::Signal`]: a signal to the running command's process group.
    Signal = 0x03,
    /// JSON [`crate::Put`], then the tree (ENTRY, DATA..., END).
    Put = 0x04,
    /// JSON [`crate::Get`]: send the tree at a path.
    Get = 0x05,
    /// Empty: answered by PONG.
    Ping = 0x06,
    /// JSON [`crate::Entry`]: one file, directory or symlink of a tree.
    Entry = 0x10,
    /// Raw bytes of the current file entry.
    Data = 0x11,
    /// Empty: the tree is complete.
    End = 0x12,
    /// JSON [`crate::Hello`]: the agent's first frame on every connection.
    Hello = 0x81,
    /// Raw bytes the command wrote to stdout.
    Stdout = 0x82,
    /// Raw bytes the command wrote to stderr.
    Stderr = 0x83,
    /// JSON [`crate::Exit`]: the command ended.
    Exit = 0x84,
    /// JSON [`crate::Failure`]: the request failed; the connection stays usable.
    Error = 0x85,
    /// JSON [`crate::Pong`]: the guest's clocks.
    Pong = 0x86,
    /// Empty: a PUT was written completely.
    Done = 0x87,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 16] = [
        Kind::Exec,
        Kind::Stdin,
        Kind::Signal,
        Kind::Put,
        Kind::Get,
        Kind::Ping,
        Kind::Entry,
        Kind::Data,
        Kind::End,
        Kind::Hello,
        Kind::Stdout,
        Kind::Stderr,
        Kind::Exit,
        Kind::Error,
        Kind::Pong,
        Kind::Done,
    ];

    /// The kind's upper-case name, as the protocol's documentation spells it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Exec => "EXEC",
            Kind::Stdin => "STDIN",
            Kind::Signal => "SIGNAL",
            Kind::Put => "PUT",
            Kind::Get => "GET",
            Kind::Ping => "PING",
            Kind::Entry => "ENTRY",
            Kind::Data => "DATA",
            Kind::End => "END",
            Kind::Hello => "HELLO",
            Kind::Stdout => "STDOUT",
            Kind::Stderr => "STDERR",
            Kind::Exit => "EXIT",
            Kind::Error => "ERROR",
            Kind::Pong => "PONG",
            Kind::Done => "DONE",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Kind> for u8 {
    fn from(kind: Kind) -> u8 {
        kind as u8
    }
}

impl TryFrom<u8> for Kind {
    type Error = FrameError;

    fn try_from(byte: u8) -> Result<Kind, FrameError> {
        Kind::ALL
            .into_iter()
            .find(|k| *k as u8 == byte)
            .ok_or(FrameError::UnknownKind(byte))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_byte() {
        for kind in Kind::ALL {
            assert_eq!(Kind::try_from(u8::from(kind)).unwrap(), kind);
        }
    }

    #[test]
    fn the_wire_values_are_the_documented_ones() {
        assert_eq!(Kind::Exec as u8, 0x01);
        assert_eq!(Kind::Ping as u8, 0x06);
        assert_eq!(Kind::Entry as u8, 0x10);
        assert_eq!(Kind::End as u8, 0x12);
        assert_eq!(Kind::Hello as u8, 0x81);
        assert_eq!(Kind::Done as u8, 0x87);
    }

    #[test]
    fn unknown_bytes_are_refused() {
        let known: Vec<u8> = Kind::ALL.iter().map(|k| *k as u8).collect();
        for byte in 0..=u8::MAX {
            if !known.contains(&byte) {
                assert!(
                    matches!(Kind::try_from(byte), Err(FrameError::UnknownKind(b)) if b == byte)
                );
            }
        }
    }
}
