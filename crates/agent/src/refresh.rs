//! `nixos-test-ng-agent refresh`: what a guest started from a saved state (the driver's boot
//! cache) runs first, in one static process: the host's time, host random bytes for the
//! kernel's pool, and the shared directories mounted again. In a guest whose code TCG has not
//! translated yet, the shell's way (a dynamic `date`, `base64` and one `mount` per share) costs
//! about a second on the systemd guest; this costs one exec.
//!
//! ```text
//! nixos-test-ng-agent refresh [--time SECS.NANOS] [--seed HEX]
//!                             [--mount DEVICE POINT FSTYPE OPTIONS]...
//! ```
//!
//! Exit status: 0 when everything was done; 1 when something failed (each failure on stderr,
//! the rest still done); 2 for bad arguments (also what an agent without this command says,
//! so that the driver falls back to the shell's way).

use std::ffi::CString;
use std::io::Write;
use std::process::ExitCode;

pub const USAGE: &str = "usage: nixos-test-ng-agent refresh [--time SECS.NANOS] [--seed HEX] \
     [--mount DEVICE POINT FSTYPE OPTIONS]...";

/// One share to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub point: String,
    pub fstype: String,
    pub options: String,
}

/// What to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Seconds and nanoseconds since the epoch.
    pub time: Option<(i64, u32)>,
    pub seed: Vec<u8>,
    pub mounts: Vec<Mount>,
}

fn parse_time(value: &str) -> Option<(i64, u32)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    if secs.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok().filter(|s| *s >= 0)?;
    let nanos = if frac.is_empty() {
        0
    } else {
        frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32)
    };
    Some((secs, nanos))
}

pub(crate) fn parse_hex(value: &str) -> Option<Vec<u8>> {
    if !value.len().is_multiple_of(2) {
        return None;
    }
    (0..value.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(value.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses the arguments after `refresh`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Refresh, String> {
    let mut out = Refresh::default();
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{flag} needs {what}"));
        match flag.as_str() {
            "--time" => {
                let v = value("a time")?;
                out.time =
                    Some(parse_time(&v).ok_or_else(|| format!("--time: not SECS[.NANOS]: {v:?}"))?);
            }
            "--seed" => {
                let v = value("hex digits")?;
                out.seed = parse_hex(&v).ok_or_else(|| format!("--seed: not hex: {v:?}"))?;
            }
            "--mount" => {
                let what = "DEVICE POINT FSTYPE OPTIONS";
                let (device, point, fstype, options) =
                    (value(what)?, value(what)?, value(what)?, value(what)?);
                if !point.starts_with('/') {
                    return Err(format!(
                        "--mount: the mount point must be absolute: {point:?}"
                    ));
                }
                out.mounts.push(Mount {
                    device,
                    point,
                    fstype,
                    options,
                });
            }
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    Ok(out)
}

/// `mount -o` options split as mount(8) does: the generic ones become flags, the rest the
/// filesystem's data.
pub fn mount_flags(options: &str) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "rw" | "defaults" => {}
            "ro" => flags |= libc::MS_RDONLY,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "lazytime" => flags |= libc::MS_LAZYTIME,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            _ => data.push(opt),
        }
    }
    (flags, data.join(","))
}

fn cstring(what: &str, s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} holds a NUL byte"))
}

fn mount(m: &Mount) -> Result<(), String> {
    std::fs::create_dir_all(&m.point).map_err(|e| format!("creating {}: {e}", m.point))?;
    let (flags, data) = mount_flags(&m.options);
    let (device, point) = (cstring("device", &m.device)?, cstring("point", &m.point)?);
    let (fstype, data) = (cstring("fstype", &m.fstype)?, cstring("options", &data)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            device.as_ptr(),
            point.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(format!(
            "mounting {} ({}) on {}: {}",
            m.device,
            m.fstype,
            m.point,
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_time((secs, nanos): (i64, u32)) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "setting the clock: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mix_seed(seed: &[u8]) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .and_then(|mut f| f.write_all(seed))
        .map_err(|e| format!("writing to /dev/urandom: {e}"))
}

/// Does everything asked; what failed, one message each (the rest is still done).
pub fn apply(refresh: &Refresh) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(time) = refresh.time {
        failures.extend(set_time(time).err());
    }
    if !refresh.seed.is_empty() {
        failures.extend(mix_seed(&refresh.seed).err());
    }
    for m in &refresh.mounts {
        failures.extend(mount(m).err());
    }
    failures
}

/// Does everything asked, reporting each failure on stderr.
pub fn run(refresh: &Refresh) -> ExitCode {
    let failures = apply(refresh);
    for f in &failures {
        eprintln!("nixos-test-ng-agent refresh: {f}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `nixos-test-ng-agent refresh ARGS`.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    match parse(args) {
        Ok(refresh) => run(&refresh),
        Err(message) => {
            eprintln!("nixos-test-ng-agent refresh: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn every_argument_is_parsed() {
        let r = parse(args(&[
            "--time",
            "1796667258.000123",
            "--seed",
            "00ff10",
            "--mount",
            "shared",
            "/tmp/shared",
            "9p",
            "rw,sync,trans=virtio",
        ]))
        .unwrap();
        assert_eq!(r.time, Some((1796667258, 123_000)));
        assert_eq!(r.seed, vec![0, 255, 16]);
        assert_eq!(
            r.mounts,
            vec![Mount {
                device: "shared".into(),
                point: "/tmp/shared".into(),
                fstype: "9p".into(),
                options: "rw,sync,trans=virtio".into(),
            }]
        );
        assert_eq!(parse(args(&["--time", "5"])).unwrap().time, Some((5, 0)));
        assert_eq!(parse(args(&[])).unwrap(), Refresh::default());
    }

    #[test]
    fn bad_arguments_name_what_is_wrong() {
        for (bad, says) in [
            (&["--time", "x"][..], "--time: not SECS"),
            (&["--time", "1.0000000001"], "--time: not SECS"),
            (&["--time", "-1"], "--time: not SECS"),
            (&["--time"], "--time needs a time"),
            (&["--seed", "abc"], "--seed: not hex"),
            (&["--seed", "zz"], "--seed: not hex"),
            (&["--mount", "a", "/b", "9p"], "--mount needs DEVICE"),
            (&["--mount", "a", "rel", "9p", "rw"], "must be absolute"),
            (&["--bogus"], "unknown argument"),
        ] {
            let e = parse(args(bad)).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn generic_options_become_flags_and_the_rest_data() {
        let (flags, data) = mount_flags("rw,sync,dirsync,relatime,access=client,trans=virtio");
        assert_eq!(
            flags,
            libc::MS_SYNCHRONOUS | libc::MS_DIRSYNC | libc::MS_RELATIME
        );
        assert_eq!(data, "access=client,trans=virtio");
        assert_eq!(
            mount_flags("ro,nosuid"),
            (libc::MS_RDONLY | libc::MS_NOSUID, String::new())
        );
    }

    #[test]
    fn a_failed_mount_is_reported_and_the_status_is_one() {
        // an unknown filesystem type: mount(2) refuses it (or, unprivileged, any mount)
        let dir = std::env::temp_dir().join(format!("ntng-refresh-{}", std::process::id()));
        let r = Refresh {
            mounts: vec![Mount {
                device: "none".into(),
                point: dir.to_string_lossy().into_owned(),
                fstype: "ntng-no-such-fs".into(),
                options: "rw".into(),
            }],
            ..Refresh::default()
        };
        assert_eq!(run(&r), ExitCode::from(1));
        assert!(dir.is_dir(), "the mount point was made");
        let _ = std::fs::remove_dir(&dir);
    }
}
