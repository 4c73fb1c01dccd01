#!/usr/bin/env bash
# Installs every system package nixos-test-ng needs to build, build its guests and run its tests.
# Idempotent: packages already present are skipped quickly. Needs root (or sudo) for apt-get.
set -euo pipefail

packages=(
  qemu-system-x86   # the VM backend (TCG works without KVM)
  qemu-utils        # qemu-img for overlays and snapshots
  vde2              # vde_switch for VLANs
  busybox-static    # guest userland
  bash-static       # guest /bin/bash (the backdoor needs ${PIPESTATUS})
  cpio kmod zstd    # initramfs packing and module dependency files
  socat             # shell_interact
  e2fsprogs         # mkfs.ext4 -d for the systemd guest's disk image
  debootstrap       # the Debian systemd guest's root file system
  systemd-container # systemd-nspawn for container machines (run-<name>-nspawn)
  util-linux        # unshare, nsenter
  tesseract-ocr     # OCR for get_screen_text and wait_for_text (host side)
  chromium          # headless rendering of the HTML report in its test
  nix-bin           # Nix 2.8: evaluates nix/lib.nix and builds nix/selftest.nix (tests/nix)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-system: all system packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (up to 10 minutes) instead of failing at once on its lock.
lock=(-o DPkg::Lock::Timeout=600)
$SUDO apt-get "${lock[@]}" update -qq || echo "setup-system: apt-get update failed; trying with the existing lists" >&2
$SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
