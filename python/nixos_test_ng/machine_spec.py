"""A machine on a command line, one syntax for `nixos-test-ng run -m`, `check`/`stubs
--machines` and `guest scripts`: `NAME[:VLAN[,VLAN...]][@KIND]`.

- `:VLAN,...` the VLANs the machine joins, in NIC order (eth1, eth2, ...); `NAME:` none.
  Without `:`, the command's default: none for `run`, VLAN 1 (NixOS's default) for
  `guest scripts`; `check` takes its VLANs from `--vlans`, and from the specs that name some.
- `@KIND` one of `KIND_ALIASES`: the busybox VM (`vm`, the default), the Debian systemd VM
  (`systemd`), the systemd-nspawn container (`container`, `nspawn`), a Firecracker microVM
  on the busybox guest (`firecracker`) or on the systemd guest's disk (`firecracker-systemd`),
  or a Cloud Hypervisor VM likewise (`cloud-hypervisor`, `cloud-hypervisor-systemd`), each
  also under its guest name (`KINDS`). `NAME:KIND` is the same as `NAME@KIND` (check's
  `NAME:nspawn`).

A leaf module (no guest, no native import), so that `check` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUSYBOX_KINDS",
    "CLOUD_HYPERVISOR_KINDS",
    "FIRECRACKER_KINDS",
    "KINDS",
    "KIND_ALIASES",
    "MAX_VLAN",
    "MachineSpec",
    "MachineSpecError",
    "VMM_KINDS",
    "parse",
    "script_word",
]

#: The built-in guests' kinds of machine: the busybox VM, the systemd VM, the systemd container,
#: and the busybox and systemd guests as Firecracker microVMs and Cloud Hypervisor VMs.
KINDS = (
    "busybox",
    "systemd-vm",
    "systemd-nspawn",
    "busybox-firecracker",
    "systemd-firecracker",
    "busybox-cloud-hypervisor",
    "systemd-cloud-hypervisor",
)
#: The kinds that boot the busybox guest (the others need the systemd guest).
BUSYBOX_KINDS = ("busybox", "busybox-firecracker", "busybox-cloud-hypervisor")
#: The kinds run by a REST-API VMM, and that VMM (the driver's kind word, the end of the start
#: script's name: `run-<name>-firecracker`, `run-<name>-cloud-hypervisor`).
VMM_KINDS = {
    "busybox-firecracker": "firecracker",
    "systemd-firecracker": "firecracker",
    "busybox-cloud-hypervisor": "cloud-hypervisor",
    "systemd-cloud-hypervisor": "cloud-hypervisor",
}
FIRECRACKER_KINDS = tuple(k for k, vmm in VMM_KINDS.items() if vmm == "firecracker")
CLOUD_HYPERVISOR_KINDS = tuple(k for k, vmm in VMM_KINDS.items() if vmm == "cloud-hypervisor")
#: Every spelling of a kind, the short ones first.
KIND_ALIASES = {
    "vm": "busybox",
    "systemd": "systemd-vm",
    "container": "systemd-nspawn",
    "nspawn": "systemd-nspawn",
    "firecracker": "busybox-firecracker",
    "firecracker-systemd": "systemd-firecracker",
    "cloud-hypervisor": "busybox-cloud-hypervisor",
    "cloud-hypervisor-systemd": "systemd-cloud-hypervisor",
    **{k: k for k in KINDS},
}
#: VLAN numbers are 1..MAX_VLAN (a VLAN is the 192.168.<vlan>.0/24 network).
MAX_VLAN = 255

SYNTAX = "NAME[:VLAN[,VLAN...]][@KIND]"


class MachineSpecError(ValueError):
    """A machine spec that does not follow `SYNTAX`; the message names the spec."""


@dataclass(frozen=True)
class MachineSpec:
    name: str
    #: The VLANs, or None when the spec names none (`NAME`, `NAME@KIND`).
    vlans: tuple[int, ...] | None = None
    #: One of `KINDS`, or None when the spec names none.
    kind: str | None = None

    @property
    def is_container(self) -> bool:
        return self.kind == "systemd-nspawn"

    @property
    def word(self) -> str:
        """The driver's word for the machine's kind (`script_word`)."""
        return script_word(self.kind)


def script_word(kind: str | None) -> str:
    """The driver's word for a machine of `kind` (one of `KINDS`, None for the default), which
    ends its start script's name (`run-<name>-<word>`): `vm`, `nspawn`, `firecracker` or
    `cloud-hypervisor`."""
    if kind == "systemd-nspawn":
        return "nspawn"
    return VMM_KINDS.get(kind or "", "vm")


def _kind(word: str, spec: str) -> str:
    kind = KIND_ALIASES.get(word)
    if kind is None:
        raise MachineSpecError(
            f"machine `{spec}`: unknown kind `{word}` (expected one of {', '.join(KIND_ALIASES)})"
        )
    return kind


def _vlans(text: str, spec: str, name: str) -> tuple[int, ...]:
    vlans = []
    for item in text.split(",") if text else []:
        try:
            vlan = int(item, 10)
        except ValueError:
            raise MachineSpecError(
                f"machine `{name}`: VLAN `{item}` is not a number (in `{spec}`; expected {SYNTAX})"
            ) from None
        if not 1 <= vlan <= MAX_VLAN:
            raise MachineSpecError(f"machine `{name}`: VLAN `{vlan}` is outside 1..{MAX_VLAN}")
        vlans.append(vlan)
    return tuple(vlans)


def parse(spec: str) -> MachineSpec:
    """`NAME[:VLAN[,VLAN...]][@KIND]` (or `NAME:KIND`) -> a `MachineSpec`. Which names are
    valid is the command's business (`guest.layout` for machines it builds)."""
    head, at, kind_word = spec.partition("@")
    name, colon, after = head.partition(":")
    if not name:
        raise MachineSpecError(f"machine `{spec}` has no name (expected {SYNTAX})")
    kind = _kind(kind_word, spec) if at else None
    if not colon:
        return MachineSpec(name, None, kind)
    if not at and after in KIND_ALIASES:  # NAME:KIND
        return MachineSpec(name, None, KIND_ALIASES[after])
    return MachineSpec(name, _vlans(after, spec, name), kind)
