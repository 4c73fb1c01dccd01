"""Upstream's driver for a same-run comparison (`--upstream CMD`): its command, and its
provenance for the results (the files' sha256 and the nixpkgs commits they were read at).

The driver itself is never part of this repository. Its provenance is read from a
`PROVENANCE.json` next to the command (in its directory or the one above), which lists each
file as `{"local": path relative to that file, "path": path in nixpkgs, "commit": ...}`; the
harness hashes the files as they are now, so an edited file shows as a changed sha256."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

PROVENANCE = "PROVENANCE.json"


class UpstreamError(Exception):
    """`--upstream CMD` names nothing that can run."""


def command(text: str) -> tuple[str, ...]:
    """The command line of `--upstream CMD`, its program resolved on PATH."""
    words = shlex.split(text)
    if not words:
        raise UpstreamError("--upstream: empty command")
    found = shutil.which(words[0])
    if found is None:
        raise UpstreamError(f"--upstream: `{words[0]}` is not an executable (nor on PATH)")
    return (str(Path(found).absolute()), *words[1:])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance(cmd: tuple[str, ...]) -> dict[str, Any]:
    """What the results record of upstream's driver."""
    program = Path(cmd[0])
    doc: dict[str, Any] = {
        "command": shlex.join(cmd),
        "program_sha256": sha256(program),
        "python": None,
        "provenance_file": None,
        "files": [],
        "note": None,
    }
    first = program.read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
    if first.startswith("#!"):
        interp = first[2:].strip().split()[0]
        try:
            r = subprocess.run(
                [interp, "--version"], capture_output=True, text=True, timeout=30, check=False
            )
            doc["python"] = (r.stdout or r.stderr).strip() or None
        except OSError:
            pass
    for d in (program.parent, program.parent.parent):
        f = d / PROVENANCE
        if f.is_file():
            recorded = json.loads(f.read_text())
            doc["provenance_file"] = str(f)
            doc["repository"] = recorded.get("repository")
            doc["dependencies"] = recorded.get("dependencies")
            for entry in recorded.get("files", []):
                local = d / entry["local"]
                now = sha256(local) if local.is_file() else None
                doc["files"].append(
                    {
                        **entry,
                        "sha256": now,
                        "unchanged": now is not None and now == entry.get("sha256"),
                    }
                )
            break
    else:
        doc["note"] = (
            f"no {PROVENANCE} next to the command: which nixpkgs files and commits it runs is"
            " not known"
        )
    return doc
