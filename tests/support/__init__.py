"""Test support shared by the suite's fixtures, tests and fakes (`tests/conftest.py` puts
`tests/` on `sys.path`, so this is `support`): running the driver, fake VMs, terminals, the
QEMU arguments the driver appends, the VMM backends against the API stand-ins (`vmm.py`), and
the leak check. Process walking and reaping come from `nixos_test_ng.procs`, which
`nixos-test-ng run` and the benchmarks share.

No bare `assert` here: pytest rewrites assertions only in test modules and conftest files, so
these modules fail explicitly (`pytest.fail`, exceptions) to work under `python -O` too."""
