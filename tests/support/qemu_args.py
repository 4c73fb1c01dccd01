"""The arguments the driver appends to a VM's start script (`QemuBackend::appended_args`, in
upstream's order), built for the guest tests that play the driver's part and parsed by the
fake QEMU that plays QEMU's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def appended_args(state: Path | str, allow_reboot: bool = False) -> list[str]:
    """What the upstream driver appends to a start script whose state directory is `state`
    (without `-no-reboot` for a machine with `allow_reboot = true`)."""
    args = [
        "-qmp", f"unix:{state}/qmp,server=on,wait=off",
        "-monitor", f"unix:{state}/monitor",
        "-chardev", f"socket,id=shell,path={state}/shell",
        "-device", "virtio-serial",
        "-device", "virtconsole,chardev=shell",
        "-device", "virtio-rng-pci",
        "-serial", "stdio",
        "-no-reboot",
        "-nographic",
    ]  # fmt: skip
    return [a for a in args if a != "-no-reboot"] if allow_reboot else args


class MissingSockets(ValueError):
    """The arguments name no QMP, monitor or shell socket."""


@dataclass(frozen=True)
class Sockets:
    """The unix sockets of the appended arguments."""

    qmp: str
    monitor: str
    shell: str

    @classmethod
    def parse(cls, argv: list[str]) -> Sockets:
        qmp = monitor = shell = None
        for flag, value in zip(argv, argv[1:], strict=False):
            if flag == "-qmp" and value.startswith("unix:"):
                qmp = value[len("unix:") :].split(",")[0]
            elif flag == "-monitor" and value.startswith("unix:"):
                monitor = value[len("unix:") :].split(",")[0]
            elif flag == "-chardev" and "id=shell" in value.split(","):
                for part in value.split(","):
                    if part.startswith("path="):
                        shell = part[len("path=") :]
        if not (qmp and monitor and shell):
            raise MissingSockets(f"missing -qmp/-monitor/-chardev shell in {argv!r}")
        return cls(qmp, monitor, shell)
