//! The guest's shared directories (9p, virtiofs) as `/proc/mounts` lists them, and what keeps
//! one in use: what a snapshot has to unmount and mount again.

use crate::transport::shell::shell_quote as q;

/// A shared-directory mount of the guest, as `/proc/mounts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    pub device: String,
    pub point: String,
    pub fstype: String,
    pub options: String,
}

/// The 9p and virtiofs mounts in a `/proc/mounts` text (octal escapes decoded).
pub fn shared_mounts(proc_mounts: &str) -> Vec<Mount> {
    proc_mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4 && (f[2] == "9p" || f[2] == "virtiofs")).then(|| Mount {
                device: unescape(f[0]),
                point: unescape(f[1]),
                fstype: f[2].to_string(),
                options: f[3].to_string(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The lower layers of the overlay mounts in a `/proc/mounts` text: (lower directory,
/// overlay mount point).
pub fn overlay_lowers(proc_mounts: &str) -> Vec<(String, String)> {
    proc_mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "overlay").then_some(f)
        })
        .flat_map(|f| {
            let point = unescape(f[1]);
            let lowers = f[3]
                .split(',')
                .find_map(|o| o.strip_prefix("lowerdir="))
                .unwrap_or_default();
            lowers
                .split(':')
                .filter(|l| !l.is_empty())
                .map(move |l| (unescape(l), point.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The shares that an overlay uses as a lower layer (at or below their mount point): the guest
/// keeps using them even once they are unmounted. Each with the overlay's mount point.
pub(crate) fn held_by_overlays<'a>(
    shares: &'a [Mount],
    proc_mounts: &str,
) -> Vec<(&'a Mount, String)> {
    let lowers = overlay_lowers(proc_mounts);
    shares
        .iter()
        .filter_map(|m| {
            let inside = |l: &str| {
                l == m.point
                    || l.strip_prefix(m.point.as_str())
                        .is_some_and(|rest| rest.starts_with('/') || m.point == "/")
            };
            lowers
                .iter()
                .find(|(l, _)| inside(l))
                .map(|(_, overlay)| (m, overlay.clone()))
        })
        .collect()
}

/// One shell command mounting `mounts` (`None` when there are none); each is tried even when
/// another fails, and the command fails when one did.
pub fn mount_command(mounts: &[Mount]) -> Option<String> {
    let parts: Vec<String> = mounts
        .iter()
        .map(|m| {
            format!(
                "mkdir -p {p} && mount -t {t} -o {o} {d} {p} || ntng_s=1",
                p = q(&m.point),
                t = q(&m.fstype),
                o = q(&m.options),
                d = q(&m.device)
            )
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "{{ ntng_s=0; {}; [ $ntng_s = 0 ]; }} 2>&1",
            parts.join("; ")
        )
    })
}

/// What makes a NixOS VM snapshottable: its view of the host's store is what blocks it.
pub const NIXOS_STORE_FIX: &str = "this is a NixOS VM's view of the host's Nix store (9p tag \
    `nix-store` under /nix/store, which NixOS keeps while it runs): give the VMs their store as \
    a read-only disk image instead, `virtualisation.useNixStoreImage = true;` with the image \
    attached read-only, which nixos-test-ng's test module does with \
    `nixos-test-ng.snapshots = true;`";

/// A share NixOS mounts for the host's store.
pub(crate) fn is_nix_store(tag: &str, point: &str) -> bool {
    tag == "nix-store" || point == "/nix/.ro-store"
}

/// The fix for shares the guest cannot let go of: NixOS's when the host store is among them.
pub(crate) fn share_fix<'a>(
    mut shares: impl Iterator<Item = &'a Mount>,
    otherwise: &str,
) -> String {
    if shares.any(|m| is_nix_store(&m.device, &m.point)) {
        NIXOS_STORE_FIX.to_string()
    } else {
        otherwise.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_mounts_are_found_and_decoded() {
        let text = "proc /proc proc rw 0 0\n\
                    shared /tmp/shared 9p rw,trans=virtio 0 0\n\
                    xchg /tmp/my\\040dir 9p rw,sync 0 0\n\
                    fs /mnt/v virtiofs rw 0 0\n";
        let m = shared_mounts(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].point, "/tmp/my dir");
        assert_eq!(m[0].options, "rw,trans=virtio");
        assert_eq!(m[2].fstype, "virtiofs");
    }

    #[test]
    fn one_command_mounts_every_share() {
        assert_eq!(mount_command(&[]), None);
        let m = shared_mounts(
            "shared /tmp/shared 9p rw,trans=virtio 0 0\nxchg /tmp/my\\040dir 9p rw 0 0\n",
        );
        assert_eq!(
            mount_command(&m).unwrap(),
            "{ ntng_s=0; mkdir -p /tmp/shared && mount -t 9p -o rw,trans=virtio shared \
             /tmp/shared || ntng_s=1; mkdir -p '/tmp/my dir' && mount -t 9p -o rw xchg \
             '/tmp/my dir' || ntng_s=1; [ $ntng_s = 0 ]; } 2>&1"
        );
    }

    #[test]
    fn shares_under_an_overlay_are_found() {
        // NixOS with the host's store over 9p (writableStore)
        let text = "nix-store /nix/.ro-store 9p rw,relatime,loose,trans=virtio 0 0\n\
                    shared /tmp/shared 9p rw,trans=virtio 0 0\n\
                    overlay /nix/store overlay rw,relatime,lowerdir=/nix/.ro-store,\
                    upperdir=/nix/.rw-store/upper,workdir=/nix/.rw-store/work 0 0\n\
                    overlay /srv overlay rw,lowerdir=/a:/tmp/shared/sub,upperdir=/u,workdir=/w 0 0\n";
        assert_eq!(
            overlay_lowers(text),
            [
                ("/nix/.ro-store".to_string(), "/nix/store".to_string()),
                ("/a".to_string(), "/srv".to_string()),
                ("/tmp/shared/sub".to_string(), "/srv".to_string()),
            ]
        );
        let shares = shared_mounts(text);
        let held: Vec<(String, String)> = held_by_overlays(&shares, text)
            .into_iter()
            .map(|(m, o)| (m.device.clone(), o))
            .collect();
        let want = [("nix-store", "/nix/store"), ("shared", "/srv")];
        assert_eq!(held, want.map(|(d, o)| (d.to_string(), o.to_string())));
        // `/tmp/sharedx` is not under `/tmp/shared`
        let other = "shared /tmp/shared 9p rw 0 0\noverlay /o overlay lowerdir=/tmp/sharedx 0 0\n";
        assert!(held_by_overlays(&shared_mounts(other), other).is_empty());
    }
}
