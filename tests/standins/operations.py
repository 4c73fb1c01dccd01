"""An API operation as the spec tables list it, and finding the one a request names."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Operation:
    """One method on one path of a spec.

    `path` may hold `{name}` parameters (one path segment each); `body` is the request body's
    schema (None: the operation takes no body); `responses` are the status codes the spec
    documents; `implemented` says whether the stand-in carries it out (the others answer the
    spec's error naming them)."""

    method: str
    path: str
    operation_id: str
    body: dict | None = None
    body_required: bool = False
    responses: tuple[int, ...] = (204,)
    implemented: bool = False
    segments: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(split(self.path)))

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters when `segments` fit this operation's path, else None."""
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, segments, strict=True):
            if want.startswith("{") and want.endswith("}"):
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


def split(path: str) -> list[str]:
    return [part for part in path.split("?", 1)[0].split("/") if part]


def find(
    operations: tuple[Operation, ...], method: str, path: str
) -> tuple[Operation | None, dict[str, str], bool]:
    """(the operation, its path parameters, whether any operation has this path at all)."""
    segments = split(path)
    path_known = False
    for op in operations:
        params = op.match(segments)
        if params is None:
            continue
        path_known = True
        if op.method == method:
            return op, params, True
    return None, {}, path_known
