# The two commands of the README: `make demo` and `make test`. Each does all the setup.
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check -q
export NIXOS_TEST_NG_GUEST_DIR ?= $(CURDIR)/build/guest
PYTEST_ARGS ?=

.PHONY: all setup install doctor guest demo test lint test-rust test-python bench soak fuzz clean

all: install

## System packages (apt) and the Python build/test tools.
setup:
	./scripts/setup-system.sh
	$(PIP) install -r requirements-dev.txt

## Build and install the package (Rust engine + Python), as `pip install .` does.
install: setup
	$(PIP) install .

## What this host can do (QEMU, KVM, containers, OCR, guests, ...); fails when the demo cannot run.
doctor: install
	nixos-test-ng doctor

## Build the default guests: the busybox VM and the Debian systemd guest (cached).
guest: install
	nixos-test-ng guest build --systemd

## Run the example test: two VMs on a VLAN, a server and a client, with subtests.
demo: doctor guest
	mkdir -p build/demo
	nixos-test-ng run examples/vlan_echo.py --machine server:1 --machine client:1 -- -o build/demo

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	ruff check .
	ruff format --check .

test-rust:
	cargo test --workspace

test-python: guest
	$(PYTHON) -m pytest -ra --durations=30 $(PYTEST_ARGS)

## Everything CI runs.
test: guest lint test-rust test-python

bench: guest
	$(PYTHON) benches/run.py

## Long runs without leaks: 1,000 runs, 10,000 commands, 8 VMs at once (docs/soak.md; not CI).
soak: guest
	$(PYTHON) benches/soak.py

## The parsers' property tests in long mode: PROPTEST_CASES cases each (default 10 million);
## FUZZ_ONLY=REGEX runs only the properties whose names match.
FUZZ_ONLY ?=
fuzz:
	./scripts/fuzz.sh '$(FUZZ_ONLY)'

clean:
	rm -rf build target dist
