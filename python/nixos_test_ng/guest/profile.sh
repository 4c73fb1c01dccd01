# /etc/profile of the nixos-test-ng busybox guest (sourced by the backdoor)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
umask 022
