# Builder of the start scripts of one test's network: `$out/bin/run-<node>-vm` (or
# `-nspawn`), as a NixOS node's `system.build.vm` holds `bin/run-<node>-vm`. The scripts boot
# the guest built in `$guestDir` (kernel, initrd: outside the store). Arguments: the nodes as
# `nixos-test-ng guest scripts` takes them (`NAME:VLAN,...[@KIND]`), every node of the test,
# so that both number the nodes alike.
set -eu
"$guestTool" guest scripts --guest-dir "$guestDir" -o "$out/bin" "$@"
