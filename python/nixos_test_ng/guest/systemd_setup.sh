#!/bin/bash
# /usr/local/lib/nixos-test-ng/setup: ntng-setup.service of the nixos-test-ng systemd guest (VM
# only). It reads the same kernel command-line keys as the busybox guest's /init, written by the
# same start-script generator:
#   ntng.hostname=NAME                    host name
#   ntng.if=IFNAME,MAC,ADDR/PREFIX        one per VLAN NIC: rename the NIC with MAC to IFNAME,
#                                         give it ADDR/PREFIX (repeatable)
#   ntng.hosts=IP=NAME,IP=NAME,...        extra /etc/hosts lines; `ntng.hosts=fw_cfg` reads
#                                         "IP=NAME IP=NAME ..." from the QEMU fw_cfg file
#                                         opt/nixos-test-ng/hosts instead (long lists)
# and sets up the host name, /etc/hosts, lo, eth0 (QEMU user-mode NIC, 10.0.2.15/24, no default
# route), the VLAN NICs and the 9p shares xchg and shared, as the busybox guest does. The
# backdoor starts after it. Every process costs tens of milliseconds under TCG, so this uses
# shell builtins where it can: one `ip -batch` and the two mounts are all it runs.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "ntng-setup: $*" >&2; }

hostname=nixos
if_specs=()
hosts=
read -r cmdline </proc/cmdline
set -f
for arg in $cmdline; do
	case $arg in
	ntng.hostname=*) hostname=${arg#*=} ;;
	ntng.if=*) if_specs+=("${arg#*=}") ;;
	ntng.hosts=*) hosts=${arg#*=} ;;
	esac
done
set +f

echo "$hostname" >/proc/sys/kernel/hostname
echo "$hostname" >/etc/hostname

if [ "$hosts" = fw_cfg ]; then
	modprobe qemu_fw_cfg
	raw=/sys/firmware/qemu_fw_cfg/by_name/opt/nixos-test-ng/hosts/raw
	if [ -r "$raw" ]; then read -r hosts <"$raw"; else hosts= && log "cannot read $raw"; fi
fi
{
	echo "127.0.0.1 localhost"
	echo "::1 localhost"
	for entry in ${hosts//,/ }; do
		echo "${entry%%=*} ${entry#*=}"
	done
} >/etc/hosts

# Networking: lo, then every VLAN NIC renamed by MAC (two passes, all to temporary names first,
# so renaming eth2 -> eth1 cannot collide with an existing eth1), the user-mode NIC as eth0.
iface_with_mac() {
	local dev addr
	for dev in /sys/class/net/*; do
		read -r addr 2>/dev/null <"$dev/address" || continue
		[ "$addr" = "$1" ] && { REPLY=${dev##*/}; return 0; }
	done
	return 1
}
wait_a_bit() { read -r -t 0.05 <> <(:) || :; }
batch="link set lo up"$'\n'
temporary=()
n=0
for spec in "${if_specs[@]}"; do
	n=$((n + 1))
	mac=${spec#*,}
	mac=${mac%%,*}
	i=0
	until iface_with_mac "$mac" || [ $i -ge 100 ]; do
		i=$((i + 1))
		wait_a_bit
	done
	if [ $i -lt 100 ]; then
		temporary+=("$REPLY")
		batch+="link set $REPLY name ntngtmp$n"$'\n'
	else
		temporary+=("")
		log "no network interface with MAC $mac"
	fi
done
# the NIC left over is the user-mode one: make sure it is eth0
eth0=
for dev in /sys/class/net/eth*; do
	[ -e "$dev" ] || continue
	name=${dev##*/}
	for t in "${temporary[@]}"; do [ "$t" = "$name" ] && continue 2; done
	eth0=$name
	break
done
if [ -n "$eth0" ] && [ "$eth0" != eth0 ]; then
	batch+="link set $eth0 name eth0"$'\n'
fi
n=0
for spec in "${if_specs[@]}"; do
	n=$((n + 1))
	[ -n "${temporary[n - 1]}" ] || continue
	name=${spec%%,*}
	batch+="link set ntngtmp$n name $name"$'\n'
	batch+="address add ${spec##*,} dev $name"$'\n'
	batch+="link set $name up"$'\n'
done
if [ -n "$eth0" ]; then
	batch+="link set eth0 up"$'\n'
	batch+="address add 10.0.2.15/24 dev eth0"$'\n'
fi
ip -force -batch - <<<"$batch" || log "some network settings failed"

# 9p shares from the start script: xchg and shared (absent shares are skipped, not fatal)
for tag in xchg shared; do
	[ -d "/tmp/$tag" ] || mkdir -p "/tmp/$tag"
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=131072 "$tag" "/tmp/$tag" 2>/dev/null ||
		log "no 9p share $tag"
done
read -r uptime _ </proc/uptime
log "host name $hostname, network and shares set up after ${uptime}s"
exit 0
