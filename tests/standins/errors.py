"""The error an API handler raises to answer a request with a fault."""

from __future__ import annotations


class Fault(Exception):
    """Answers the request with `status` and `messages` (Firecracker uses the first message as
    its fault_message; Cloud Hypervisor sends the list, outermost error first)."""

    def __init__(self, status: int, *messages: str) -> None:
        self.status = status
        self.messages = list(messages)
        super().__init__(": ".join(messages))


def not_supported(what: str) -> str:
    return f"not supported by the stand-in: {what}"


def open_error(path: str) -> str:
    """How a Rust io::Error reads for a path that cannot be opened."""
    import errno
    import os

    if not os.path.exists(path):
        code = errno.ENOENT
    elif os.path.isdir(path):
        code = errno.EISDIR
    else:
        code = errno.EACCES
    return f"{os.strerror(code)} (os error {code})"


def readable_file(path: str) -> bool:
    import os

    return os.path.isfile(path) and os.access(path, os.R_OK)
