//! The boot cache: a VM's state right after its first handshake, saved across runs, so that a
//! later run with the same key starts the VM from it instead of booting it.
//!
//! ```text
//! launch, cache on:  key (key.rs) → entry? ── yes → its disks copied (and checked) into
//!                      <state>/boot-cache/ → a QEMU started there as a warm standby is,
//!                      `-S -loadvm ntng-boot-cache`, warmed up (clock, random pool, shares)
//!                      and taken over as the launch   (a damaged entry: discarded, boot)
//!                    └─ no → normal boot; at its first handshake (machine/snapshot.rs):
//!                      shares unmounted → stop → savevm → disks copied into a temp dir of the
//!                      cache → cont → in the background: checksums, manifest, fsync, rename
//! ```
//!
//! On with `--reuse-boots` or [`DIR_VAR`]; the layout of the directory is `store.rs`'s.

mod backend;
pub mod key;
pub mod memory;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::backend::MachineInfo;
use crate::error::{Error, Result};
pub(crate) use backend::CacheState;
pub use key::KeyInputs;
pub use store::{Committed, Entry, Manifest, Store};

/// Turns the cache on and names its directory.
pub const DIR_VAR: &str = "NIXOS_TEST_NG_BOOT_CACHE";
/// The cache's size limit (`8G`, `500M`, bytes).
pub const SIZE_VAR: &str = "NIXOS_TEST_NG_BOOT_CACHE_SIZE";
/// The default size limit.
pub const DEFAULT_SIZE: u64 = 8 << 30;
/// The QEMU snapshot an entry's disks hold.
pub const SNAPSHOT: &str = "ntng-boot-cache";
/// Appended to every QEMU of a run with the cache on (so that a saved VM and the QEMU that
/// loads it have the same devices): a VM generation ID device whose ID is new in every QEMU
/// process, so that a guest started from a saved state is told so and its kernel reseeds its
/// random number generator at once (Linux's vmgenid driver); writing to /dev/urandom only
/// mixes bytes into the pool for the next scheduled reseed.
pub const DEVICE_ARGS: [&str; 2] = ["-device", "vmgenid,guid=auto"];
/// The TMPDIR of a QEMU started from the cache, in the machine's state directory.
pub const HIT_DIR: &str = "boot-cache";

/// `$XDG_CACHE_HOME/nixos-test-ng/boots`, else `~/.cache/nixos-test-ng/boots`.
pub fn default_dir(env: &HashMap<String, String>) -> PathBuf {
    let base = env
        .get("XDG_CACHE_HOME")
        .filter(|v| Path::new(v).is_absolute())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env.get("HOME").map_or("/root", String::as_str)).join(".cache")
        });
    base.join("nixos-test-ng").join("boots")
}

/// The cache directory and limit from the environment, whether or not the cache is on.
pub fn store_from_env(env: &HashMap<String, String>) -> Result<Store> {
    let dir = match env.get(DIR_VAR).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => default_dir(env),
    };
    let limit = match env.get(SIZE_VAR).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => store::parse_size(v).ok_or_else(|| {
            Error::Config(format!(
                "{SIZE_VAR}={v:?} is not a size: use bytes or a number with K, M, G or T (e.g. 8G)"
            ))
        })?,
        _ => DEFAULT_SIZE,
    };
    Ok(Store { dir, limit })
}

/// The run's cache: on with `flag` (`--reuse-boots`) or a non-empty [`DIR_VAR`].
pub fn settings(flag: bool, env: &HashMap<String, String>) -> Result<Option<Store>> {
    let by_env = env.get(DIR_VAR).is_some_and(|v| !v.trim().is_empty());
    if !flag && !by_env {
        return Ok(None);
    }
    store_from_env(env).map(Some)
}

/// The key's inputs for a launch of `info`'s machine by `start_command`, with `appended`
/// the arguments the driver appends (for the state directory `$STATE`).
pub fn gather(start_command: &str, info: &MachineInfo, appended: Vec<String>) -> KeyInputs {
    let script = if Path::new(start_command).is_file() {
        std::fs::read_to_string(start_command).unwrap_or_else(|_| start_command.to_string())
    } else {
        start_command.to_string()
    };
    let lookup = |k: &str| {
        info.env
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(k).ok())
    };
    let mut names: Vec<String> = key::KEY_ENV.iter().map(|s| s.to_string()).collect();
    names.push(format!("NIXPKGS_QEMU_KERNEL_{}", info.name));
    let mut vlans: Vec<u32> = info
        .env
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("QEMU_VDE_SOCKET_")?.parse().ok())
        .collect();
    vlans.sort_unstable();
    KeyInputs {
        files: key::named_files(&script),
        qemu: key::qemu_binary(&script),
        start_script: script,
        appended,
        env: names
            .into_iter()
            .map(|n| {
                let v = lookup(&n);
                (n, v)
            })
            .collect(),
        vlans,
        node: info.node,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Where the built-in guests (systemd, busybox) keep the guest agent, whose `refresh`
/// command does in one static process what [`refresh_command`]'s shell fallback does.
pub const AGENT_PATHS: [&str; 2] = [
    "/usr/local/lib/nixos-test-ng/nixos-test-ng-agent",
    "/lib/nixos-test-ng/nixos-test-ng-agent",
];

/// Where the built-in guests' refresh server (`nixos-test-ng-agent refresh-server`, started by
/// their backdoor script) keeps its FIFOs.
pub const REFRESH_SERVER_DIR: &str = "/run/nixos-test-ng/refresh";

/// The command a guest started from the cache runs first (in its shell itself: it unsets the
/// variables it sets): the host's time, host random bytes mixed into its pool, and `mounts`
/// mounted again. Three ways, the first that the guest has:
/// 1. the built-in guests' refresh server: a process that was running when the state was
///    saved does it all, asked through FIFOs with shell builtins (no fork, no exec: in a guest
///    whose code TCG has not translated yet those cost about 0.2 s);
/// 2. the guest agent's `refresh`: one static process;
/// 3. (no agent, or one too old to know `refresh`: it exits 2) `date` (to the microsecond
///    where it takes fractions, as GNU's does; else rounded to the second, as busybox's),
///    `printf` into /dev/urandom, and `mount`s.
pub fn refresh_command(mounts: &[crate::backend::shares::Mount]) -> String {
    refresh_command_with(mounts, REFRESH_SERVER_DIR)
}

fn refresh_command_with(mounts: &[crate::backend::shares::Mount], server_dir: &str) -> String {
    use crate::transport::shell::shell_quote as q;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let rounded = (now.as_secs_f64()).round() as u64;
    let mut random = [0u8; 72];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut random);
    }
    let (seed, nonce) = random.split_at(64);
    use crate::trace::hex;
    let mut shell_way = format!(
        "{{ date -s @{}.{:06} || date -s @{rounded}; }} >/dev/null 2>&1 && {} > /dev/urandom",
        now.as_secs(),
        now.subsec_micros(),
        printf_bytes(seed)
    );
    if let Some(m) = crate::backend::shares::mount_command(mounts) {
        shell_way = format!("{shell_way} && {m}");
    }
    let mut args = vec![
        "--time".to_string(),
        format!("{}.{:09}", now.as_secs(), now.subsec_nanos()),
        "--seed".into(),
        hex(seed),
    ];
    for m in mounts {
        args.extend([
            "--mount".to_string(),
            m.device.clone(),
            m.point.clone(),
            m.fstype.clone(),
            m.options.clone(),
        ]);
    }
    let agent_args: Vec<String> = args.iter().map(|a| q(a)).collect();
    let agent_args = agent_args.join(" ");
    let request: Vec<String> = args.iter().map(|a| hex(a.as_bytes())).collect();
    let request = request.join(" ");
    let nonce = hex(nonce);
    let d = server_dir;
    // The shell waits for the answer without `read -t`: bash times that by the wall clock,
    // which the refresh moves (often by far more than any timeout), so a read that started
    // before the server set the clock would time out at once. The server's pid was checked;
    // a server that never answers runs into the driver's deadline for the start.
    let server_way = format!(
        "ntng_r=2; \
         if [ -p {d}/request ] && {{ read -r ntng_p <{d}/pid; }} 2>/dev/null && [ -d \"/proc/$ntng_p\" ]; then \
         echo {nonce} {request} 1<>{d}/request; \
         while read -r ntng_n ntng_v ntng_m <>{d}/reply; do \
         if [ \"$ntng_n\" = {nonce} ]; then ntng_r=$ntng_v; break; fi; done; \
         if [ \"$ntng_r\" = 1 ]; then echo \"$ntng_m\"; fi; fi"
    );
    let [first, second] = AGENT_PATHS;
    let exec_way = format!(
        "ntng_a={first}; [ -x $ntng_a ] || ntng_a={second}; ntng_r=2; \
         if [ -x $ntng_a ]; then ntng_r=0; $ntng_a refresh {agent_args} 2>&1 || ntng_r=$?; fi; \
         if [ $ntng_r = 2 ]; then {shell_way}; else [ $ntng_r = 0 ]; fi"
    );
    format!(
        "{server_way}; if [ \"$ntng_r\" = 2 ]; then {exec_way}; else [ \"$ntng_r\" = 0 ]; fi; \
         ntng_q=$?; unset ntng_a ntng_r ntng_s ntng_p ntng_n ntng_v ntng_m; [ $ntng_q = 0 ] && unset ntng_q"
    )
}

/// A bash `printf` (a builtin: no process) that writes `bytes`.
fn printf_bytes(bytes: &[u8]) -> String {
    let escaped: String = bytes.iter().map(|b| format!("\\x{b:02x}")).collect();
    format!("printf '{escaped}'")
}

/// The first 12 digits of a key.
pub fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// A time (seconds since the epoch) as local `YYYY-MM-DD HH:MM:SS`.
pub fn fmt_time(secs: u64) -> String {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r writes into the tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("@{secs}");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn on_by_flag_or_variable() {
        let home = env(&[("HOME", "/home/u")]);
        assert_eq!(settings(false, &home).unwrap(), None);
        let s = settings(true, &home).unwrap().unwrap();
        assert_eq!(s.dir, PathBuf::from("/home/u/.cache/nixos-test-ng/boots"));
        assert_eq!(s.limit, DEFAULT_SIZE);
        let xdg = env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/c")]);
        assert_eq!(
            settings(true, &xdg).unwrap().unwrap().dir,
            PathBuf::from("/c/nixos-test-ng/boots")
        );
        let var = env(&[(DIR_VAR, "/d"), (SIZE_VAR, "1G")]);
        let s = settings(false, &var).unwrap().unwrap();
        assert_eq!((s.dir, s.limit), (PathBuf::from("/d"), 1 << 30));
        let bad = env(&[(DIR_VAR, "/d"), (SIZE_VAR, "big")]);
        let e = settings(false, &bad).unwrap_err().to_string();
        assert!(
            e.contains("NIXOS_TEST_NG_BOOT_CACHE_SIZE=\"big\" is not a size"),
            "{e}"
        );
    }

    #[test]
    fn the_refresh_command() {
        let mounts = [crate::backend::shares::Mount {
            device: "shared".into(),
            point: "/tmp/shared".into(),
            fstype: "9p".into(),
            options: "rw,trans=virtio".into(),
        }];
        let c = refresh_command(&mounts);
        assert!(
            c.contains(&format!("[ -p {REFRESH_SERVER_DIR}/request ]")),
            "{c}"
        );
        assert!(c.contains(" refresh --time "), "{c}");
        assert!(
            c.contains(" --mount shared /tmp/shared 9p rw,trans=virtio 2>&1"),
            "{c}"
        );
        assert!(c.contains("{ date -s @"), "{c}");
        assert!(
            c.contains("' > /dev/urandom && { ntng_s=0; mkdir -p /tmp/shared"),
            "{c}"
        );
        assert_ne!(c, refresh_command(&mounts), "fresh random bytes each time");
        let every_byte: Vec<u8> = (0..=255).collect();
        let out = std::process::Command::new("bash")
            .args(["-c", &printf_bytes(&every_byte)])
            .output()
            .unwrap();
        assert_eq!(out.stdout, every_byte);
        let sh = std::process::Command::new("bash")
            .args(["-n", "-c", &c])
            .status()
            .unwrap();
        assert!(sh.success(), "{c}");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(fmt_time(0).len(), 19);
    }

    #[test]
    fn the_backdoor_starts_the_refresh_server_where_the_driver_asks_it() {
        let backdoor = include_str!("../../../../../python/nixos_test_ng/guest/backdoor.sh");
        assert!(
            backdoor.contains(&format!(" refresh-server {REFRESH_SERVER_DIR} ")),
            "{backdoor}"
        );
    }

    /// What the shell way ran, from fake `date` and `mount` on PATH (never the host's).
    struct Sandbox {
        dir: std::path::PathBuf,
    }

    impl Sandbox {
        fn new(name: &str) -> Sandbox {
            let dir =
                std::env::temp_dir().join(format!("ntng-refresh-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("bin")).unwrap();
            std::fs::create_dir_all(dir.join("server")).unwrap();
            for tool in ["date", "mount"] {
                let path = dir.join("bin").join(tool);
                std::fs::write(
                    &path,
                    format!("#!/bin/sh\necho {tool} \"$@\" >> {}/ran\n", dir.display()),
                )
                .unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            Sandbox { dir }
        }

        fn server(&self) -> std::path::PathBuf {
            self.dir.join("server")
        }

        fn mounts(&self) -> Vec<crate::backend::shares::Mount> {
            vec![crate::backend::shares::Mount {
                device: "shared".into(),
                point: self.dir.join("mnt").display().to_string(),
                fstype: "9p".into(),
                options: "rw,trans=virtio".into(),
            }]
        }

        fn fifos(&self, pid: u32) {
            for name in ["request", "reply"] {
                let c =
                    std::ffi::CString::new(self.server().join(name).display().to_string()).unwrap();
                // SAFETY: a NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }
            std::fs::write(self.server().join("pid"), format!("{pid}\n")).unwrap();
        }

        /// Runs the command in a bash with the fake tools first on PATH: its status, output,
        /// and the `ntng_` variables left behind.
        fn run(&self, command: &str) -> (i32, String, String) {
            let script = format!("{command}\necho \"STATUS=$?\"\nset | grep '^ntng_' || true");
            let out = std::process::Command::new("bash")
                .args(["--norc", "-c", &script])
                .env(
                    "PATH",
                    format!("{}:/usr/bin:/bin", self.dir.join("bin").display()),
                )
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (before, after) = text.split_once("STATUS=").unwrap();
            let (status, vars) = after.split_once('\n').unwrap();
            (
                status.parse().unwrap(),
                before.to_string(),
                vars.to_string(),
            )
        }

        fn ran(&self) -> String {
            std::fs::read_to_string(self.dir.join("ran")).unwrap_or_default()
        }
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A refresh server on the sandbox's FIFOs that answers one request with `answers` (each a
    /// reply line with `NONCE` replaced by the request's nonce); the request's decoded
    /// arguments, and the FIFOs it holds open (as the real server does: a FIFO that nobody
    /// holds loses what it buffered).
    #[allow(clippy::type_complexity)]
    fn fake_server(
        server: std::path::PathBuf,
        answers: &'static [&'static str],
    ) -> std::thread::JoinHandle<(Vec<String>, [std::fs::File; 2])> {
        use std::io::{BufRead, Write};
        // opened before the shell can write: a FIFO that nobody holds drops what it is given
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(server.join(name))
                .unwrap()
        };
        let held = [open("request"), open("reply")];
        let mut request = std::io::BufReader::new(held[0].try_clone().unwrap());
        let mut reply = held[1].try_clone().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            request.read_line(&mut line).unwrap();
            let mut words = line.split_whitespace();
            let nonce = words.next().unwrap().to_string();
            let args = words
                .map(|w| {
                    let bytes: Vec<u8> = (0..w.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&w[i..i + 2], 16).unwrap())
                        .collect();
                    String::from_utf8(bytes).unwrap()
                })
                .collect();
            for a in answers {
                reply
                    .write_all(format!("{}\n", a.replace("NONCE", &nonce)).as_bytes())
                    .unwrap();
            }
            (args, held)
        })
    }

    #[test]
    fn the_refresh_server_answers_and_nothing_else_runs() {
        let sb = Sandbox::new("served");
        sb.fifos(std::process::id());
        let server = fake_server(sb.server(), &["stale 0 ", "NONCE 0 "]);
        let c = refresh_command_with(&sb.mounts(), &sb.server().display().to_string());
        let (status, out, vars) = sb.run(&c);
        assert_eq!((status, out.as_str(), vars.as_str()), (0, "", ""));
        let (args, _) = server.join().unwrap();
        assert_eq!(args[0], "--time");
        assert_eq!(args[2], "--seed");
        assert_eq!(args[3].len(), 128);
        assert_eq!(
            args[4..],
            [
                "--mount",
                "shared",
                &sb.mounts()[0].point,
                "9p",
                "rw,trans=virtio"
            ]
        );
        assert_eq!(sb.ran(), "", "no fallback");
    }

    #[test]
    fn a_failure_the_server_reports_fails_the_command_with_its_message() {
        let sb = Sandbox::new("failed");
        sb.fifos(std::process::id());
        let server = fake_server(sb.server(), &["NONCE 1 mounting shared: busy"]);
        let c = refresh_command_with(&sb.mounts(), &sb.server().display().to_string());
        let (status, out, vars) = sb.run(&c);
        server.join().unwrap();
        assert_eq!(status, 1);
        assert_eq!(out, "mounting shared: busy\n");
        assert_eq!(vars, "ntng_q=1\n");
        assert_eq!(sb.ran(), "", "no fallback");
    }

    #[test]
    fn without_a_live_server_the_shell_way_runs() {
        // a server that cannot read the request: the fallback
        let sb = Sandbox::new("refused");
        sb.fifos(std::process::id());
        let server = fake_server(sb.server(), &["NONCE 2 unknown argument"]);
        let c = refresh_command_with(&sb.mounts(), &sb.server().display().to_string());
        let (status, out, vars) = sb.run(&c);
        server.join().unwrap();
        assert_eq!((status, out.as_str(), vars.as_str()), (0, "", ""));
        let ran = sb.ran();
        assert!(ran.starts_with("date -s @"), "{ran}");
        assert!(
            ran.contains("\nmount -t 9p -o rw,trans=virtio shared "),
            "{ran}"
        );

        // no server directory at all, and a pid that is not running: no wait, the fallback
        for dead in [false, true] {
            let sb = Sandbox::new(if dead { "dead" } else { "none" });
            if dead {
                let child = std::process::Command::new("true").spawn().unwrap();
                let pid = child.id();
                let mut child = child;
                child.wait().unwrap();
                sb.fifos(pid);
            }
            let c = refresh_command_with(&sb.mounts(), &sb.server().display().to_string());
            let (status, out, vars) = sb.run(&c);
            assert_eq!((status, out.as_str(), vars.as_str()), (0, "", ""));
            assert!(sb.ran().starts_with("date -s @"), "{}", sb.ran());
        }
    }
}
