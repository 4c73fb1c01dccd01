//! `nixos-test-ng-agent refresh-server DIR`: the refresh of `refresh.rs`, done by a process
//! that is already running when the driver saves the guest's state (the built-in guests'
//! backdoor starts it). After a start from the boot cache the guest's shell then sets the clock,
//! mixes in the seed and mounts the shares with two writes and a read of FIFOs, all shell
//! builtins: no fork and no exec, which cost about 0.2 s in a guest whose code TCG has not
//! translated yet.
//!
//! DIR (made with mode 0700) holds:
//! - `request` (a FIFO, 0600): one line per refresh, `NONCE ARG...`: the nonce is 1 to 64
//!   ASCII letters and digits, each argument one of `refresh`'s, in hex (the line needs no
//!   quoting in a shell);
//! - `reply` (a FIFO, 0600): one line per request, `NONCE STATUS MESSAGE`; STATUS is what
//!   `refresh` would exit with (0 done; 1 something failed, MESSAGE says what; 2 a request it
//!   cannot read);
//! - `pid`: the server's pid; `served`: how many requests it has answered; `lock`.
//!
//! The server holds both FIFOs open for reading and writing: a writer's open never blocks and
//! no request is lost between two opens. A reply that nobody reads is dropped once its FIFO is
//! full. One server per DIR (a lock on `lock`): a second start exits 0 at once. The server
//! makes DIR and its files before it goes to the background, so when the command has returned
//! the server is ready.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::refresh::{self, Refresh};
use crate::sys;

pub const USAGE: &str = "usage: nixos-test-ng-agent refresh-server DIR";

/// A request line longer than this is discarded (a refresh's is a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;

pub const REQUEST: &str = "request";
pub const REPLY: &str = "reply";
pub const PID: &str = "pid";
pub const SERVED: &str = "served";
const LOCK: &str = "lock";

/// A server whose files are ready, before it serves.
pub struct Server {
    dir: PathBuf,
    request: File,
    reply: File,
    /// Held while the server lives: the lock on DIR/lock.
    _lock: File,
}

/// What [`prepare`] found.
pub enum Prepared {
    Ready(Server),
    /// Another server holds DIR.
    AlreadyRunning,
}

fn fifo(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let c = sys::cpath(path.as_os_str())?;
    // SAFETY: a NUL-terminated path.
    sys::cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })?;
    // O_RDWR: the open does not wait for a peer, and the FIFO never sees EOF.
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Makes DIR, takes its lock and makes the FIFOs.
pub fn prepare(dir: &Path) -> io::Result<Prepared> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir.join(LOCK))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(Prepared::AlreadyRunning),
            _ => Err(e),
        };
    }
    let request = fifo(&dir.join(REQUEST))?;
    let reply = fifo(&dir.join(REPLY))?;
    sys::set_nonblocking(&reply)?;
    std::fs::write(dir.join(SERVED), "0\n")?;
    Ok(Prepared::Ready(Server {
        dir: dir.to_path_buf(),
        request,
        reply,
        _lock: lock,
    }))
}

impl Server {
    /// Serves until the request FIFO fails (it never sees EOF: the server holds it open).
    pub fn serve(mut self, mut apply: impl FnMut(&Refresh) -> Vec<String>) -> io::Result<()> {
        let served_path = self.dir.join(SERVED);
        let mut served = 0u64;
        let mut lines = Lines::default();
        let mut buf = [0u8; 4096];
        loop {
            let n = match self.request.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for line in lines.push(&buf[..n]) {
                let Some(answer) = answer(&line, &mut apply) else {
                    continue;
                };
                // counted first: whoever reads the reply sees the count
                served += 1;
                let _ = std::fs::write(&served_path, format!("{served}\n"));
                // A full FIFO (replies nobody read) drops this one: the asker gave up.
                let _ = self.reply.write_all(answer.as_bytes());
            }
        }
    }
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes; a longer one is dropped
/// whole.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
    discarding: bool,
}

impl Lines {
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            if !self.discarding && self.partial.len() + i <= MAX_LINE {
                self.partial.extend_from_slice(&bytes[..i]);
                out.push(std::mem::take(&mut self.partial));
            }
            self.partial.clear();
            self.discarding = false;
            bytes = &bytes[i + 1..];
        }
        if !self.discarding {
            if self.partial.len() + bytes.len() > MAX_LINE {
                self.partial.clear();
                self.discarding = true;
            } else {
                self.partial.extend_from_slice(bytes);
            }
        }
        out
    }
}

fn valid_nonce(nonce: &[u8]) -> bool {
    (1..=64).contains(&nonce.len()) && nonce.iter().all(|b| b.is_ascii_alphanumeric())
}

/// The reply line to one request line; none when it has no nonce to answer to.
pub fn answer(line: &[u8], apply: &mut impl FnMut(&Refresh) -> Vec<String>) -> Option<String> {
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let nonce = words.next().filter(|n| valid_nonce(n))?;
    let nonce = String::from_utf8_lossy(nonce);
    let args: Result<Vec<String>, String> = words
        .map(|w| {
            let text = std::str::from_utf8(w).map_err(|_| "an argument is not hex".to_string())?;
            let bytes = refresh::parse_hex(text)
                .ok_or_else(|| format!("an argument is not hex: {text:?}"))?;
            String::from_utf8(bytes).map_err(|_| "an argument is not UTF-8".to_string())
        })
        .collect();
    let (status, message) = match args.and_then(refresh::parse) {
        Err(e) => (2, e),
        Ok(r) => {
            let failures = apply(&r);
            (u8::from(!failures.is_empty()), failures.join("; "))
        }
    };
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(format!("{nonce} {status} {message}\n"))
}

/// Goes to the background: the parent writes the child's pid to DIR/pid and returns; the child
/// leaves the caller's session and terminal and returns `None`.
fn daemonize(dir: &Path) -> io::Result<Option<ExitCode>> {
    // SAFETY: the agent is single-threaded here; the child only makes syscalls and serves.
    let pid = sys::cvt(unsafe { libc::fork() })?;
    if pid > 0 {
        std::fs::write(dir.join(PID), format!("{pid}\n"))?;
        return Ok(Some(ExitCode::SUCCESS));
    }
    // SAFETY: plain syscalls on descriptors 0-2 and one we open.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    let _ = std::env::set_current_dir("/");
    Ok(None)
}

/// `nixos-test-ng-agent refresh-server DIR`.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.into_iter().collect();
    let [dir] = args.as_slice() else {
        eprintln!("nixos-test-ng-agent refresh-server: {USAGE}");
        return ExitCode::from(2);
    };
    let dir = Path::new(dir);
    let fail = |e: io::Error| {
        eprintln!("nixos-test-ng-agent refresh-server: {}: {e}", dir.display());
        ExitCode::from(1)
    };
    let server = match prepare(dir) {
        Ok(Prepared::Ready(server)) => server,
        Ok(Prepared::AlreadyRunning) => return ExitCode::SUCCESS,
        Err(e) => return fail(e),
    };
    match daemonize(dir) {
        Ok(Some(parent)) => parent,
        Ok(None) => {
            let _ = server.serve(refresh::apply);
            ExitCode::from(1)
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn request(nonce: &str, args: &[&str]) -> Vec<u8> {
        let mut line = nonce.to_string();
        for a in args {
            line.push(' ');
            line.push_str(&hex(a));
        }
        line.into_bytes()
    }

    #[test]
    fn a_request_is_applied_and_answered_with_its_nonce() {
        let mut seen = Vec::new();
        let mut apply = |r: &Refresh| {
            seen.push(r.seed.clone());
            Vec::new()
        };
        let line = request("n0Nce", &["--seed", "00ff", "--time", "12.5"]);
        assert_eq!(answer(&line, &mut apply).unwrap(), "n0Nce 0 \n");
        assert_eq!(seen, vec![vec![0, 255]]);
    }

    #[test]
    fn failures_and_bad_requests_say_what() {
        let mut failing = |_: &Refresh| vec!["mounting x: busy".to_string(), "b\nc".into()];
        let line = request("a1", &["--mount", "d", "/p", "9p", "trans=virtio"]);
        assert_eq!(
            answer(&line, &mut failing).unwrap(),
            "a1 1 mounting x: busy; b c\n"
        );
        let mut never = |_: &Refresh| -> Vec<String> { panic!("not applied") };
        let bad_flag = answer(&request("a2", &["--bogus"]), &mut never).unwrap();
        assert!(
            bad_flag.starts_with("a2 2 unknown argument \"--bogus\""),
            "{bad_flag}"
        );
        assert!(!bad_flag.trim_end().contains('\n'));
        assert_eq!(
            answer(b"a3 zz", &mut never).unwrap(),
            "a3 2 an argument is not hex: \"zz\"\n"
        );
        assert_eq!(
            answer(b"a4 ff", &mut never).unwrap(),
            "a4 2 an argument is not UTF-8\n"
        );
        // no nonce to answer to
        for line in [&b""[..], b"   ", b"no-nonce 00", b"\xff 00", &[b'x'; 65]] {
            assert_eq!(answer(line, &mut never), None, "{line:?}");
        }
    }

    #[test]
    fn lines_split_at_any_boundary_and_overlong_ones_are_dropped() {
        let mut l = Lines::default();
        assert!(l.push(b"ab").is_empty());
        assert_eq!(
            l.push(b"c\nd\n\ne"),
            vec![b"abc".to_vec(), b"d".to_vec(), vec![]]
        );
        assert_eq!(l.push(b"f\n"), vec![b"ef".to_vec()]);
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(l.push(&long).is_empty());
        assert!(l.push(b"still the long line").is_empty());
        assert_eq!(l.push(b"\nok\n"), vec![b"ok".to_vec()]);
        let exact = vec![b'y'; MAX_LINE];
        let mut with_newline = exact.clone();
        with_newline.push(b'\n');
        assert_eq!(l.push(&with_newline), vec![exact]);
    }

    #[test]
    fn prepare_makes_private_fifos_and_one_server_holds_the_dir() {
        let dir = std::env::temp_dir().join(format!("ntng-refresh-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let Prepared::Ready(server) = prepare(&dir).unwrap() else {
            panic!("the first one holds the lock")
        };
        use std::os::unix::fs::FileTypeExt;
        for name in [REQUEST, REPLY] {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert!(meta.file_type().is_fifo(), "{name}");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert!(matches!(prepare(&dir).unwrap(), Prepared::AlreadyRunning));
        drop(server);
        assert!(matches!(prepare(&dir).unwrap(), Prepared::Ready(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut lines = Lines::default();
        let mut at = 0;
        for &cut in cuts {
            let end = (at + cut).min(bytes.len());
            out.extend(lines.push(&bytes[at..end]));
            at = end;
        }
        out.extend(lines.push(&bytes[at..]));
        out
    }

    proptest! {
        /// Any bytes, cut anywhere: the same lines, none over the limit, none with a newline;
        /// every reply is one line that starts with the request's nonce, and nothing panics.
        #[test]
        fn request_lines_split_the_same_at_any_cuts_and_answers_are_one_line(
            bytes in proptest::collection::vec(
                proptest::sample::select(&b"\n \n  0123456789abcdefx-\xff\x00\t"[..]),
                0..1024,
            ),
            cuts in proptest::collection::vec(0usize..64, 0..32),
        ) {
            let whole = chunked(&bytes, &[]);
            prop_assert_eq!(&chunked(&bytes, &cuts), &whole);
            let expected: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
            prop_assert_eq!(whole.len(), expected.len() - 1);
            for line in &whole {
                prop_assert!(line.len() <= MAX_LINE && !line.contains(&b'\n'));
                let mut applied = 0;
                let mut apply = |_: &Refresh| {
                    applied += 1;
                    vec!["failed\nfully".to_string()]
                };
                if let Some(reply) = answer(line, &mut apply) {
                    let nonce = reply.split(' ').next().unwrap();
                    prop_assert!(valid_nonce(nonce.as_bytes()));
                    let first = line.split(|&b| b == b' ').find(|w| !w.is_empty());
                    prop_assert_eq!(first, Some(nonce.as_bytes()));
                    prop_assert!(reply.ends_with('\n'));
                    prop_assert_eq!(reply.matches('\n').count(), 1);
                    prop_assert!(applied <= 1);
                }
            }
        }
    }

    proptest! {
        // 64 cases of 64 KiB each in the short mode; `PROPTEST_CASES` (the long mode) wins
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
            ..ProptestConfig::default()
        })]
        /// Lines longer than the limit are dropped whole, however they arrive.
        #[test]
        fn overlong_lines_are_dropped_whole(
            extra in 1usize..4096,
            cuts in proptest::collection::vec(1usize..(MAX_LINE / 4), 0..8),
        ) {
            let mut bytes = vec![b'x'; MAX_LINE + extra];
            bytes.extend_from_slice(b"\nok\n");
            prop_assert_eq!(chunked(&bytes, &cuts), vec![b"ok".to_vec()]);
        }
    }
}
