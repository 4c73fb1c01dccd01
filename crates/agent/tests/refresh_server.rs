//! `nixos-test-ng-agent refresh-server DIR` as a process: ready when the command returns,
//! one per directory, answering requests on its FIFOs. The requests only mix bytes into
//! /dev/urandom (allowed to any user, and harmless): never the host's clock or mounts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn agent(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nixos-test-ng-agent"))
        .arg("refresh-server")
        .arg(dir)
        .output()
        .unwrap()
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(self.0.join("pid")) {
            if let Ok(p) = p.trim().parse::<i32>() {
                // SAFETY: a signal to the server this test started.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rdwr(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .unwrap()
}

#[test]
fn it_serves_requests_on_its_fifos_and_runs_once_per_directory() {
    let dir = std::env::temp_dir().join(format!("ntng-refresh-server-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _stop = Stop(dir.clone());

    let out = agent(&dir);
    assert!(out.status.success(), "{out:?}");
    let server = pid(&dir);
    assert!(alive(server));
    assert_eq!(std::fs::read_to_string(dir.join("served")).unwrap(), "0\n");

    // A second start finds the first one and leaves it alone.
    let again = agent(&dir);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(pid(&dir), server);

    let mut request = rdwr(&dir.join("request"));
    let mut reply = BufReader::new(rdwr(&dir.join("reply")));
    let mut ask = |line: String| {
        request.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        reply.read_line(&mut answer).unwrap();
        answer
    };
    // a stale line without a nonce gets no answer; the next request is answered in order
    let seed = format!("x1 {} {}\n", hex("--seed"), hex("0123456789abcdef"));
    assert_eq!(ask(format!("-\n{seed}")), "x1 0 \n");
    let bad = ask(format!("x2 {}\n", hex("--time")));
    assert_eq!(bad, "x2 2 --time needs a time\n");
    assert_eq!(std::fs::read_to_string(dir.join("served")).unwrap(), "2\n");

    // Killed, it leaves its lock behind: the next start serves again.
    // SAFETY: a signal to the server this test started.
    unsafe { libc::kill(server, libc::SIGKILL) };
    while alive(server)
        && std::fs::read_to_string(format!("/proc/{server}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let restarted = agent(&dir);
    assert!(restarted.status.success(), "{restarted:?}");
    assert_ne!(pid(&dir), server);
    let mut request = rdwr(&dir.join("request"));
    let mut reply = BufReader::new(rdwr(&dir.join("reply")));
    request.write_all(seed.as_bytes()).unwrap();
    let mut answer = String::new();
    reply.read_line(&mut answer).unwrap();
    assert_eq!(answer, "x1 0 \n");
}

#[test]
fn bad_arguments_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_nixos-test-ng-agent"))
        .arg("refresh-server")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refresh-server DIR"));
}
