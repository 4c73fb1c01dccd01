#!/bin/sh
# /init of the nixos-test-ng busybox guest (PID 1, busybox ash).
#
# Kernel command-line keys (written by the start scripts; dotted, so the kernel does not pass
# them to this process as environment variables):
#   ntng.hostname=NAME                    host name
#   ntng.if=IFNAME,MAC,ADDR/PREFIX        one per VLAN NIC: rename the NIC with MAC to IFNAME,
#                                         give it ADDR/PREFIX (repeatable)
#   ntng.hosts=IP=NAME,IP=NAME,...        extra /etc/hosts lines; `ntng.hosts=fw_cfg` reads
#                                         "IP=NAME IP=NAME ..." from the QEMU fw_cfg file
#                                         opt/nixos-test-ng/hosts instead (long lists)
#   root=DEV [rootfstype=TYPE]            boot a real root file system instead (the systemd
#                                         guest: ext4 on /dev/vda): mount it, move /dev, /proc,
#                                         /sys and /run there and switch_root to its /sbin/init,
#                                         which then does all of the above itself
#   ntng.agent=0                          do not start the guest agent
#   ntng.agent=tcp                        start the guest agent also without a vsock device, and
#                                         let it listen on TCP 10.0.2.15:7001 too: eth0, the
#                                         user-mode NIC, never a VLAN NIC (the VMM stand-ins'
#                                         hybrid vsock over QEMU's user-mode network, which
#                                         forwards a host port there; see agent.sh)
# Progress goes to the console (ttyS0). The backdoor (/lib/nixos-test-ng/backdoor) runs on
# /dev/hvc0 and is respawned when it exits; so does the guest agent (/lib/nixos-test-ng/agent.sh,
# vsock port 7001) when the VM has a virtio vsock device or ntng.agent=tcp asks for it.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
umask 022

log() { echo "init: $*"; }

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
log "mounted /proc /sys /dev /tmp /run after $(cut -d' ' -f1 /proc/uptime)s"

# Modules, coldplug style: the PCI transport, then the driver of each virtio device present
# (console, net, rng, 9p, vsock, blk, ...). File systems (9p, overlay, virtiofs) and the rest are
# loaded by the kernel on first use through /sbin/modprobe.
modprobe virtio_pci || log "cannot load virtio_pci"
# shellcheck disable=SC2046  # one modalias per word
modprobe -a $(cat /sys/bus/virtio/devices/*/modalias 2>/dev/null | sort -u) || log "some drivers failed to load"
# The screen: Debian's kernel has no VGA text console here, so the console reaches the screen
# through bochs' DRM framebuffer (fbcon). In the background: nothing before the backdoor needs it.
modprobe bochs 2>/dev/null &

hostname=nixos
if_specs=
hosts=
root=
rootfstype=ext4
agent=1
set -f
for arg in $(cat /proc/cmdline); do
	case $arg in
	ntng.hostname=*) hostname=${arg#*=} ;;
	ntng.if=*) if_specs="$if_specs ${arg#*=}" ;;
	ntng.hosts=*) hosts=${arg#*=} ;;
	root=*) root=${arg#*=} ;;
	rootfstype=*) rootfstype=${arg#*=} ;;
	ntng.agent=*) agent=${arg#*=} ;;
	esac
done
set +f

# A real root file system (the systemd guest): the virtio drivers are loaded above, so the disk
# is there or about to be; its init configures everything else from the same keys.
if [ -n "$root" ]; then
	modprobe "$rootfstype" 2>/dev/null
	i=0
	while [ ! -b "$root" ] && [ $i -lt 200 ]; do
		i=$((i + 1))
		sleep 0.05
	done
	mkdir -p /newroot
	if mount -t "$rootfstype" -o rw "$root" /newroot; then
		log "switching to $root ($rootfstype) after $(cut -d' ' -f1 /proc/uptime)s"
		umount /tmp
		for d in dev proc sys run; do
			mount --move "/$d" "/newroot/$d"
		done
		exec switch_root /newroot /sbin/init
	fi
	log "cannot mount the root file system $root ($rootfstype); staying in the initramfs"
fi

hostname "$hostname"
echo "$hostname" >/etc/hostname

if [ "$hosts" = fw_cfg ]; then
	modprobe qemu_fw_cfg
	hosts=$(cat /sys/firmware/qemu_fw_cfg/by_name/opt/nixos-test-ng/hosts/raw 2>/dev/null) ||
		log "cannot read the host list from fw_cfg"
fi
{
	echo "127.0.0.1 localhost"
	echo "::1 localhost"
	for entry in $(echo "$hosts" | tr ',' ' '); do
		echo "${entry%%=*} ${entry#*=}"
	done
} >/etc/hosts

# Networking: lo, eth0 (QEMU user-mode NIC, slirp's fixed guest address, no default route, as in
# NixOS test VMs), then every VLAN NIC renamed by MAC and given its static address.
ip link set lo up
iface_with_mac() {
	for dev in /sys/class/net/*; do
		[ "$(cat "$dev/address" 2>/dev/null)" = "$1" ] && { echo "${dev##*/}"; return 0; }
	done
	return 1
}
# two passes (all to temporary names, then to the final ones), so that renaming eth2 -> eth1
# cannot collide with an existing eth1
n=0
for spec in $if_specs; do
	n=$((n + 1))
	mac=${spec#*,}
	mac=${mac%%,*}
	i=0
	until dev=$(iface_with_mac "$mac"); do
		i=$((i + 1))
		[ $i -gt 100 ] && break
		sleep 0.05
	done
	if [ -n "$dev" ]; then
		ip link set "$dev" name "ntngtmp$n"
	else
		log "no network interface with MAC $mac"
	fi
done
# the NIC left over is the user-mode one: make sure it is eth0
if [ -n "$if_specs" ] && [ ! -e /sys/class/net/eth0 ]; then
	for dev in /sys/class/net/eth*; do
		[ -e "$dev" ] && ip link set "${dev##*/}" name eth0 && break
	done
fi
n=0
for spec in $if_specs; do
	n=$((n + 1))
	name=${spec%%,*}
	addr=${spec##*,}
	ip link set "ntngtmp$n" name "$name" 2>/dev/null || continue
	ip addr add "$addr" dev "$name"
	ip link set "$name" up
done
if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	ip addr add 10.0.2.15/24 dev eth0
fi
log "network up after $(cut -d' ' -f1 /proc/uptime)s"

# 9p shares from the start script: xchg and shared (absent shares are skipped, not fatal)
mkdir -p /tmp/xchg /tmp/shared
for tag in xchg shared; do
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=131072 "$tag" "/tmp/$tag" 2>/dev/null ||
		log "no 9p share $tag"
done

# busybox halt/poweroff/reboot signal PID 1 with USR1/USR2/TERM. ctrl-alt-delete (the driver's
# reboot()) makes the kernel restart at once unless kernel.ctrl-alt-del is 0; then it sends INT
# to PID 1 instead, so it takes the same clean path as `reboot` (systemd turns it off too).
echo 0 >/proc/sys/kernel/ctrl-alt-del
finish() {
	log "$1"
	sync
	umount -a -r 2>/dev/null
	"$1" -f
}
trap 'finish halt' USR1
trap 'finish poweroff' USR2
trap 'finish reboot' TERM INT

# the backdoor, respawned when it exits; it waits for /dev/hvc0 (the driver's virtconsole).
# Not an asynchronous list (`( ... ) &`): in a shell without job control that would start it
# with SIGINT and SIGQUIT ignored, which nothing can undo later, so Ctrl-C could not interrupt
# a command of the backdoor. start-stop-daemon -b forks from here and execs the loop, which
# then gets every signal's default action (the traps above are reset by exec).
start-stop-daemon -S -b -p /run/ntng-backdoor-loop.pid -x /bin/sh -- -c '
	while :; do
		i=0
		while [ ! -e /dev/hvc0 ]; do
			i=$((i + 1))
			if [ $i -lt 200 ]; then sleep 0.05; else sleep 1; fi
		done
		env -i PATH="$PATH" /bin/bash /lib/nixos-test-ng/backdoor
		echo "init: backdoor exited with status $?; restarting it" >/dev/console
		sleep 0.5
	done'
log "started the backdoor after $(cut -d' ' -f1 /proc/uptime)s"

# the guest agent, respawned when it exits, when there is a virtio vsock device (id 19, whose
# driver the coldplug above loaded) or ntng.agent=tcp asks for its TCP listener (agent.sh reads
# the key too), and ntng.agent=0 does not say otherwise
vsock_device=
grep -qs '^virtio:d00000013v' /sys/bus/virtio/devices/*/modalias && vsock_device=1
if [ "$agent" != 0 ] && { [ -n "$vsock_device" ] || [ "$agent" = tcp ]; }; then
	if [ -n "$vsock_device" ]; then
		modprobe -a vsock vmw_vsock_virtio_transport || log "cannot load the vsock modules"
	fi
	start-stop-daemon -S -b -p /run/ntng-agent-loop.pid -x /bin/sh -- -c '
		while :; do
			env -i PATH="$PATH" /bin/bash /lib/nixos-test-ng/agent.sh </dev/null >/dev/ttyS0 2>&1
			echo "init: the guest agent exited with status $?; restarting it" >/dev/console
			sleep 0.5
		done'
	log "started the guest agent after $(cut -d' ' -f1 /proc/uptime)s"
fi
echo "nixos-test-ng guest $hostname: backdoor on hvc0" >/dev/tty0 2>/dev/null

# reap orphans; `wait` returns early when a trapped signal arrives, so the traps run promptly
while :; do
	wait
	sleep 1
done
