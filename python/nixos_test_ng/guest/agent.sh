#!/bin/bash
# Starts the nixos-test-ng guest agent (nixos-test-ng-agent, beside this script) with the
# environment of the backdoor (backdoor.sh, NixOS's backdoor.service): the commands it runs see
# what the backdoor's commands see. The busybox guest's /init and the systemd guest's
# nixos-test-ng-agent.service run it with an empty environment apart from PATH and restart it
# when it exits. It listens on vsock port 7001.
#
# With `ntng.agent=tcp` on the kernel command line (the VMM stand-ins, whose hybrid vsock is
# QEMU's user-mode network forwarding a host port to the guest's 10.0.2.15:7001) it listens on
# TCP 10.0.2.15:7001 too, the user-mode NIC's fixed address (never a VLAN NIC's), and on vsock
# only when the VM has a virtio vsock device. The address need not be up yet (the agent binds
# it with IP_FREEBIND), so the systemd guest's unit needs no ordering after ntng-setup.service.
#
# Without a virtio vsock device (id 19) and without ntng.agent=tcp there is nothing to listen
# on: it says so and exits with status 0, which the systemd guest's unit does not restart (an
# agent failing to listen every second would take the guest's CPU from its tests).
set -e

vsock_device=
if grep -qs '^virtio:d00000013v' /sys/bus/virtio/devices/*/modalias; then
	vsock_device=1
fi
read -r cmdline </proc/cmdline
if [[ " $cmdline " == *" ntng.agent=tcp "* ]]; then
	listen=(--listen tcp:10.0.2.15:7001)
	if [[ -n $vsock_device ]]; then
		listen+=(--vsock-port 7001)
	fi
	set -- "${listen[@]}" "$@"
elif [[ -z $vsock_device ]]; then
	echo "nixos-test-ng-agent: no virtio vsock device and no ntng.agent=tcp: not started"
	exit 0
fi

export USER=root
export HOME=/root
export DISPLAY=:0.0

if [[ -e /etc/profile ]]; then
	source /etc/profile
fi

export PAGER=

cd /tmp
exec "${BASH_SOURCE[0]%/*}/nixos-test-ng-agent" "$@"
