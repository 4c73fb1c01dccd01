//! Sizes claimed by bytes the driver does not control are not allocated: a counting allocator
//! records the largest single allocation while the readers see headers claiming gigabytes
//! (an XWD or PPM screen dump, a VMM's HTTP answer). The agent protocol's frames have the
//! same test in `crates/agent-protocol/tests/allocation.rs`.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use ntng_engine::screen::{parse_ppm, xwd::parse_xwd};
use ntng_engine::vmm::http::{Client, HttpError};

#[path = "../../agent-protocol/tests/support/largest_allocation.rs"]
mod largest_allocation;
use largest_allocation::largest_during;

/// An XWD header (25 big-endian fields) for a `width`x`height` TrueColor image of 32 bits
/// per pixel with `ncolors` colormap entries, and no pixels after it.
fn xwd_header(width: u32, height: u32, ncolors: u32) -> Vec<u8> {
    let mut f = [0u32; 25];
    f[0] = 100;
    f[1] = 7;
    f[2] = 2;
    f[4] = width;
    f[5] = height;
    f[11] = 32;
    f[12] = width.saturating_mul(4);
    f[13] = 4;
    f[14..17].copy_from_slice(&[0xff0000, 0xff00, 0xff]);
    f[19] = ncolors;
    f.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// Serves one answer, `head` then `body` (`None`: zeros until the client hangs up).
fn serve(dir: &std::path::Path, head: &'static str, body: Option<&'static [u8]>) -> Client {
    let path = dir.join(format!("api-{}.sock", head.len()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            request.push(byte[0]);
        }
        let _ = s.write_all(head.as_bytes());
        match body {
            Some(b) => drop(s.write_all(b)),
            None => {
                let zeros = vec![0u8; 64 * 1024];
                while s.write_all(&zeros).is_ok() {}
            }
        }
    });
    Client::new(path)
}

fn malformed(r: Result<ntng_engine::vmm::http::Response, HttpError>) -> String {
    match r {
        Err(e @ HttpError::Malformed { .. }) => e.to_string(),
        other => panic!("expected a malformed answer, got {other:?}"),
    }
}

// One test only: the counter is global, and tests in one binary run on parallel threads.
#[test]
fn claimed_sizes_are_not_allocated() {
    const BOUND: usize = 16 << 20;

    for data in [
        xwd_header(1 << 13, 1 << 13, 0),
        xwd_header(1 << 13, 1 << 13, u32::MAX),
        xwd_header(u32::MAX, u32::MAX, 0),
    ] {
        let mut err = String::new();
        let largest = largest_during(|| err = parse_xwd(&data).unwrap_err().to_string());
        assert!(err.contains("not a usable XWD"), "{err}");
        assert!(
            largest < BOUND,
            "XWD: largest allocation {largest} bytes ({err})"
        );
    }

    for data in [
        &b"P6 65535 65535 255\nabc"[..],
        b"P6 18446744073709551615 18446744073709551615 255\n",
    ] {
        let mut err = String::new();
        let largest = largest_during(|| err = parse_ppm(data).unwrap_err().to_string());
        assert!(err.contains("not a binary PPM"), "{err}");
        assert!(
            largest < BOUND,
            "PPM: largest allocation {largest} bytes ({err})"
        );
    }

    let dir = std::env::temp_dir().join(format!("ntng-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let timeout = Duration::from_secs(60);
    let answers: [(&'static str, Option<&'static [u8]>, &str); 3] = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n",
            Some(b"abc"),
            "closed after 3 of 1000000000000 body bytes",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Some(b"fffffffffff\r\nab"),
            "closed within a chunked body",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n",
            None,
            "longer than",
        ),
    ];
    for (head, body, expected) in answers {
        let client = serve(&dir, head, body);
        let mut err = String::new();
        let largest =
            largest_during(|| err = malformed(client.request("GET", "/vm.info", None, timeout)));
        assert!(err.contains(expected), "{err}");
        assert!(
            largest < BOUND,
            "HTTP: largest allocation {largest} bytes ({err})"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
