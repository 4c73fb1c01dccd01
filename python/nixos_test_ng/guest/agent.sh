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
set -e

read -r cmdline </proc/cmdline
if [[ " $cmdline " == *" ntng.agent=tcp "* ]]; then
	listen=(--listen tcp:10.0.2.15:7001)
	if grep -qs '^virtio:d00000013v' /sys/bus/virtio/devices/*/modalias; then
		listen+=(--vsock-port 7001)
	fi
	set -- "${listen[@]}" "$@"
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
