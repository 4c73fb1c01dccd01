"""Network conditions and partitions through the bindings, on the fake QEMU: Python values are
converted (numbers, strings, timedeltas; anything else is a TypeError) and checked by the
engine, whose `NetworkConditionError` (a ValueError) names the field and the value; nothing
reaches, nor even starts, the machine. The guest side is tests/e2e/test_netem_e2e.py."""

from __future__ import annotations

SCRIPT = r"""
from datetime import timedelta

from nixos_test_ng import NetworkConditionError

def expect(error, call, **kwargs):
    try:
        call(**kwargs)
    except error as e:
        return e
    raise SystemExit(f"{call.__name__}({kwargs}) did not raise {error.__name__}")

for kwargs, field, value in [
    ({"delay": -0.5}, "delay", "-0.5"),
    ({"delay": timedelta(hours=2)}, "delay", "7200"),
    ({"jitter": "5ms"}, "jitter", '"5ms"'),
    ({"loss": 1.5}, "loss", "1.5"),
    ({"duplicate": "101%"}, "duplicate", '"101%"'),
    ({"corrupt": "x%"}, "corrupt", '"x%"'),
    ({"rate": "1 lightyear"}, "rate", '"1 lightyear"'),
    ({"vlan": 256, "delay": 1}, "vlan", "256"),
    ({}, "conditions", "none"),
]:
    e = expect(NetworkConditionError, alpha.set_network_conditions, **kwargs)
    assert isinstance(e, ValueError)
    assert (e.field, e.value) == (field, value), (kwargs, e.field, e.value, str(e))
    assert str(e).startswith(f"invalid network condition {field}={value}: "), str(e)

for kwargs in ({"delay": True}, {"loss": [0.1]}, {"rate": None, "jitter": object()}):
    expect(TypeError, alpha.set_network_conditions, **kwargs)
e = expect(NetworkConditionError, alpha.clear_network_conditions, vlan=0)
assert e.field == "vlan"

expect(TypeError, driver.partition, groups=[alpha, alpha])
expect(TypeError, driver.partition, groups=[["alpha"], ["beta"]])
e = expect(NetworkConditionError, driver.partition, groups=[[alpha]])
assert e.field == "groups" and e.value == "[[alpha]]", e.value
e = expect(NetworkConditionError, vlan1.partition, groups=[[alpha], []])
assert "a group is empty" in str(e)
e = expect(NetworkConditionError, driver.heal, vlan=-3)
assert e.field == "vlan"
assert not alpha.booted
print("NETEM-API-OK")
"""


def test_invalid_values_raise_before_anything_starts(fake_vm, write_script, run_driver):
    vm = fake_vm("alpha")
    test = write_script("t.py", SCRIPT)
    r = run_driver(["--vm-start-scripts", vm.script, "--vlans", "1", "--", test])
    assert r.returncode == 0, r.stderr
    assert "NETEM-API-OK" in r.stdout
    assert "starting vm" not in r.stderr and not vm.record.exists()  # nothing booted
