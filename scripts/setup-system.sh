#!/usr/bin/env bash
# Installs every system package nixos-test-ng needs to build, build its guests and run its
# tests, in one apt transaction, then the programs that come from crates.io (`cargo install
# --locked`, into $CARGO_INSTALL_ROOT, default /usr/local; only when missing or at another
# version: vhost-device-vsock for the guest agent's vsock device, built from its crate's source
# with our fix in scripts/patches/), then checks its own result:
# every command the project runs must be on PATH afterwards, or the script fails naming each
# missing command and its package.
#
#   scripts/setup-system.sh           install what is missing, then verify
#   scripts/setup-system.sh --check   verify only (no apt): exit 1 naming what is missing
#
# apt never removes a package here (--no-remove): a machine that ships a newer qemu-utils
# than the qemu-system-x86 its sources offer (e.g. from backports) gets qemu-utils at
# qemu-system-x86's version in the same transaction, instead of losing qemu-img silently.
# Needs root (or sudo) for apt-get.
set -euo pipefail

# Every command the project runs and the package that provides it: one table, shared with
# `nixos-test-ng doctor`.
table="$(dirname "$0")/../python/nixos_test_ng/data/host_commands.tsv"
patches="$(cd "$(dirname "$0")" && pwd)/patches"
commands=()
packages=()
crates=() # command:crate@version
while IFS=$'\t' read -r command package _; do
  case "$command" in '#'* | '') continue ;; esac
  commands+=("$command:$package")
  case "$package" in
  cargo:*) crates+=("$command:${package#cargo:}") ;;
  *) [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package") ;;
  esac
done <"$table"

say() { echo "setup-system: $*"; }

# Prints "command (package)" for each missing command; returns 1 when any is missing.
missing_commands() {
  local status=0 entry
  for entry in "${commands[@]}"; do
    if ! command -v "${entry%%:*}" >/dev/null 2>&1; then
      echo "${entry%%:*} (package ${entry#*:})"
      status=1
    fi
  done
  return $status
}

verify() {
  local missing
  if missing=$(missing_commands); then
    say "all ${#commands[@]} commands present"
    return 0
  fi
  say "error: these commands are missing after setup:" >&2
  sed 's/^/  /' <<<"$missing" >&2
  say "install the named packages (apt-get install PACKAGE) and run this script again" >&2
  return 1
}

installed_version() {
  dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | sed -n 's/^install ok installed //p' || true
}

candidate_version() {
  apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
}

# The crates.io programs: `cargo install --locked CRATE --version V` unless `COMMAND --version`
# already says `COMMAND V`.
install_crates() {
  local entry command crate version have
  for entry in "${crates[@]}"; do
    command=${entry%%:*}
    crate=${entry#*:}
    version=${crate#*@}
    crate=${crate%@*}
    have=$("$command" --version 2>/dev/null | head -n 1 || true)
    if [ "$have" = "$command $version" ]; then
      say "$command $version present"
      continue
    fi
    if ! command -v cargo >/dev/null 2>&1; then
      say "error: $command $version comes from crates.io, and cargo is not installed" \
        "(https://rustup.rs, or apt-get install cargo)" >&2
      return 1
    fi
    say "installing $crate $version with cargo${have:+ (found: $have)}"
    if ! cargo_install "$crate" "$version"; then
      say "error: cargo install $crate $version failed (its messages are above)" >&2
      return 1
    fi
  done
}

# `cargo install` of CRATE at VERSION. A version `V+ntng.N` is crates.io's V with our patch
# scripts/patches/CRATE-V+ntng.N.patch: its source is fetched, patched and installed.
cargo_install() {
  local crate=$1 version=$2 root=${CARGO_INSTALL_ROOT:-/usr/local}
  local patch="$patches/$crate-$version.patch"
  if [ "$version" = "${version%%+*}" ]; then
    cargo install --locked --force "$crate" --version "$version" --root "$root"
    return
  fi
  [ -f "$patch" ] || {
    say "error: $crate $version needs $patch, which is not there" >&2
    return 1
  }
  local work status=0
  work=$(mktemp -d)
  (
    set -e
    cd "$work"
    # a throwaway package that depends on the crate: `cargo fetch` unpacks its source into
    # cargo's registry (a crate without a library is left out of `cargo metadata`)
    mkdir src
    : >src/lib.rs
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = "=%s"\n' \
      "$crate" "${version%%+*}" >Cargo.toml
    cargo fetch -q
    sources=("${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$crate-${version%%+*}")
    [ -f "${sources[0]}/Cargo.toml" ] || {
      echo "cargo fetch did not unpack $crate ${version%%+*} into ${sources[0]}" >&2
      exit 1
    }
    cp -r "${sources[0]}" "$work/source"
    cd "$work/source"
    git apply -p1 "$patch"
    CARGO_TARGET_DIR="$work/target" cargo install --locked --force --path . --root "$root"
  ) || status=$?
  rm -rf "$work"
  return $status
}

if [ "${1:-}" = "--check" ]; then
  verify
  exit
fi

missing_packages=()
for p in "${packages[@]}"; do
  [ -n "$(installed_version "$p")" ] || missing_packages+=("$p")
done
if [ ${#missing_packages[@]} -eq 0 ]; then
  say "all system packages present"
  install_crates || {
    verify || true
    exit 1
  }
  verify
  exit
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (up to 10 minutes) instead of failing at once on its lock.
apt_opts=(-o DPkg::Lock::Timeout=600)
say "updating the package lists"
$SUDO apt-get "${apt_opts[@]}" update -qq ||
  say "apt-get update failed; trying with the existing lists" >&2

# One QEMU version: qemu-utils Breaks a qemu-system-common older than itself, so a newer
# qemu-utils than the qemu-system-x86 on offer is installed at qemu-system-x86's version.
requests=("${missing_packages[@]}")
qemu_version=$(installed_version qemu-system-x86)
[ -n "$qemu_version" ] || qemu_version=$(candidate_version qemu-system-x86)
utils_version=$(installed_version qemu-utils)
if [ -n "$qemu_version" ] && [ -n "$utils_version" ] && [ "$utils_version" != "$qemu_version" ]; then
  say "qemu-utils $utils_version does not match qemu-system-x86 $qemu_version;" \
    "installing qemu-utils $qemu_version with it (one QEMU version)"
  others=()
  for r in "${requests[@]}"; do [ "$r" = qemu-utils ] || others+=("$r"); done
  requests=("${others[@]}" "qemu-utils=$qemu_version")
fi

say "installing ${requests[*]}"
if ! $SUDO apt-get "${apt_opts[@]}" install -y -q --no-install-recommends --no-remove \
  --allow-downgrades "${requests[@]}"; then
  say "error: apt-get install failed (its messages are above)" >&2
  verify || true
  exit 1
fi
install_crates || {
  verify || true
  exit 1
}
verify
