#!/bin/sh
# /etc/systemd/system-generators/nixos-test-ng: makes multi-user.target want backdoor.service
# and nixos-test-ng-agent.service, outside containers only. The backdoor needs dev-hvc0.device and dev-ttyS0.device, which never
# appear in a container (device units are unsupported there), so a static `WantedBy=` would make
# every container boot log a failed dependency; its ConditionVirtualization=!container cannot help
# because dependencies are queued before conditions are checked.
normal_dir=${1:-/run/systemd/generator}
case ${SYSTEMD_VIRTUALIZATION:-} in
container:*) exit 0 ;;
esac
/usr/bin/systemd-detect-virt --container --quiet && exit 0
mkdir -p "$normal_dir/multi-user.target.wants"
ln -sf /etc/systemd/system/backdoor.service "$normal_dir/multi-user.target.wants/backdoor.service"
ln -sf /etc/systemd/system/nixos-test-ng-agent.service \
	"$normal_dir/multi-user.target.wants/nixos-test-ng-agent.service"
