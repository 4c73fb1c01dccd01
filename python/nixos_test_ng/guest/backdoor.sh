#!/bin/bash
# The root-shell backdoor of the nixos-test-ng busybox guest. It takes the same steps, in the same
# order, as the script of NixOS's backdoor.service (nixos/modules/testing/test-instrumentation.nix),
# which the test driver's connect() and execute() rely on, plus the refresh server below. /init
# runs it with an empty environment (apart from PATH), as systemd would, and restarts it when it
# exits.
set -e

export USER=root
export HOME=/root
export DISPLAY=:0.0

if [[ -e /etc/profile ]]; then
	source /etc/profile
fi

# no pager: commands run on a tty and would otherwise think they are interactive
export PAGER=

# The boot cache's refresh server (the guest agent beside this script, `refresh-server`): after a
# start from a saved state, the driver sets the clock, mixes in a seed and mounts the shares
# through it with shell builtins, no fork or exec in a guest whose code TCG has not translated
# yet. Ready when the command returns; one per guest, however often this script starts.
agent=${BASH_SOURCE[0]%/*}/nixos-test-ng-agent
if [[ -x $agent ]]; then
	"$agent" refresh-server /run/nixos-test-ng/refresh || true
fi
unset agent

cd /tmp
exec </dev/hvc0 >/dev/hvc0
while ! exec 2>/dev/ttyS0; do sleep 0.1; done
echo "connecting to host..." >&2
stty -F /dev/hvc0 raw -echo # no nl -> cr/nl conversion, no echo of the driver's commands
# The handshake: the driver waits for this line, and nothing may follow it before a command.
echo "Spawning backdoor root shell..."
# Reading commands from the device (not from stdin) keeps bash non-interactive: no job control,
# no prompt, no line editing.
PS1="" exec bash --norc /dev/hvc0
