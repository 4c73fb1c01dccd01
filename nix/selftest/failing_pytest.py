# One passing and one failing test, without machines: split, the failing one fails its build
# and the other builds.


def test_passes():
    assert sum([1, 1]) == 2


def test_fails():
    assert sum([1, 1]) == 3, "fails on purpose"
