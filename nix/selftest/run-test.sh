# Builder of a self-test derivation: runs nixos-test-driver inside the Nix build, as nixpkgs'
# run.nix does (`vm-test-run-<name>`): LOGFILE=/dev/null, `-o $out`, a failing test fails the
# build. Arguments: the driver's arguments after `-o`. Environment: `driver` (the command),
# PATH, and for generations A/B the wrapper's variables (startScripts, vmStartScripts, ...).
set -euo pipefail
mkdir -p "$out"
export LOGFILE=/dev/null
status=0
"$driver" -o "$out" --junit-xml junit.xml "$@" 2>&1 | tee "$out/driver.log" || status=$?
if [ -e "$out/report.html" ]; then
    mkdir -p "$out/nix-support"
    echo "report testlog $out report.html" >"$out/nix-support/hydra-build-products"
fi
exit "$status"
