//! An oversized length is refused without allocating for it: a counting allocator records
//! the largest single allocation while the parsers see such a header.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_protocol::{read_frame, FrameDecoder, FrameError, MAX_BODY};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

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
    LARGEST.store(0, Ordering::SeqCst);
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
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(largest < MAX_BODY, "largest allocation {largest} bytes");
}
