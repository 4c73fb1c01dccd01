#!/bin/bash
# Starts the nixos-test-ng guest agent (nixos-test-ng-agent, beside this script) with the
# environment of the backdoor (backdoor.sh, NixOS's backdoor.service): the commands it runs see
# what the backdoor's commands see. The busybox guest's /init and the systemd guest's
# nixos-test-ng-agent.service run it with an empty environment apart from PATH and restart it
# when it exits. It listens on vsock port 7001.
set -e

export USER=root
export HOME=/root
export DISPLAY=:0.0

if [[ -e /etc/profile ]]; then
	source /etc/profile
fi

export PAGER=

cd /tmp
exec "${BASH_SOURCE[0]%/*}/nixos-test-ng-agent" "$@"
