//! An oversized length is refused without allocating for it: a counting allocator records
//! the largest single allocation while the parsers see such a header.

use agent_protocol::{read_frame, FrameDecoder, FrameError, MAX_BODY};

mod support {
    pub mod largest_allocation;
}
use support::largest_allocation::largest_during;

/// A reader that announces a 4 GiB frame and then never ends.
struct Endless {
    sent_header: bool,
}

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.sent_header {
            self.sent_header = true;
            let head = [0x11, 0xff, 0xff, 0xff, 0xff];
            let n = head.len().min(buf.len());
            buf[..n].copy_from_slice(&head[..n]);
            return Ok(n);
        }
        buf.fill(0xaa);
        Ok(buf.len())
    }
}

// One test only: the counter is global, and tests in one binary run on parallel threads.
#[test]
fn oversized_lengths_allocate_nothing_for_their_body() {
    let largest = largest_during(|| {
        let mut d = FrameDecoder::new();
        d.push(&[0x82, 0xff, 0xff, 0xff, 0x7f]);
        let err = d.next_frame().unwrap_err();
        assert!(
            matches!(err, FrameError::Oversized { len: 0x7fff_ffff }),
            "{err}"
        );
        let err = read_frame(&mut Endless { sent_header: false }).unwrap_err();
        assert!(
            matches!(err, FrameError::Oversized { len: 0xffff_ffff }),
            "{err}"
        );
    });
    assert!(largest < MAX_BODY, "largest allocation {largest} bytes");
}
