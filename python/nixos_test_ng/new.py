"""`nixos-test-ng new`: a working test script from a template, with the editor stubs
(`--stubs`) and the matching Nix expression (`--nix`) beside it on request.

A template is a script body in `templates/<name>.py` plus the machines it runs on (the table
below). The file header, the `run` and `check` lines, the stubs and the Nix nodes all come
from that one list of machines.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nixos_test_ng.exit_status import ExitStatus

STUBS_FILE = "__builtins__.pyi"


@dataclass(frozen=True)
class Machine:
    name: str
    vlans: tuple[int, ...] = ()
    container: bool = False
    #: nixpkgs attributes the script needs on a NixOS machine (the built-in guests have them)
    nix_packages: tuple[str, ...] = ()
    #: TCP ports other machines connect to (NixOS' firewall is on by default)
    open_ports: tuple[int, ...] = ()

    @property
    def run_spec(self) -> str:
        """`-m` of `nixos-test-ng run`: NAME[:VLAN,...][@KIND]."""
        vlans = ":" + ",".join(map(str, self.vlans)) if self.vlans else ""
        return self.name + vlans + ("@container" if self.container else "")

    @property
    def check_spec(self) -> str:
        """`--machines` of `nixos-test-ng check`: NAME[:nspawn]."""
        return self.name + (":nspawn" if self.container else "")


@dataclass(frozen=True)
class Template:
    name: str
    summary: str
    machines: tuple[Machine, ...]
    #: the script's file name when -o does not give one
    default_file: str = ""
    #: header lines (without `# `) shown before the run line
    notes: tuple[str, ...] = ()
    #: top-level runNixOSTest options, one per line
    nix_options: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return self.default_file or f"{self.name}.py"

    @property
    def vlans(self) -> list[int]:
        return sorted({v for m in self.machines for v in m.vlans})

    def body(self) -> str:
        return (resources.files(__package__) / "templates" / f"{self.name}.py").read_text()

    def run_command(self, script: str) -> str:
        machines = [arg for m in self.machines for arg in ("-m", m.run_spec)]
        return shlex.join(["nixos-test-ng", "run", script, *machines])

    def check_command(self, script: str) -> str:
        args = ["nixos-test-ng", "check", script, "--machines"]
        args += [m.check_spec for m in self.machines]
        if self.vlans:
            args += ["--vlans", *map(str, self.vlans)]
        return shlex.join(args)


NETCAT = "netcat-openbsd"  # `nc -l -p`, `-q`, `-N`, as the built-in guests' nc

TEMPLATES = {
    t.name: t
    for t in (
        Template("minimal", "one machine running a few commands", (Machine("machine"),)),
        Template(
            "network",
            "a server and a client on VLAN 1, checked in subtests",
            (
                Machine("server", (1,), nix_packages=(NETCAT,), open_ports=(8000,)),
                Machine("client", (1,), nix_packages=(NETCAT,)),
            ),
        ),
        Template(
            "systemd",
            "a systemd service unit on a container: wait_for_unit, wait_for_open_port",
            (Machine("server", container=True, nix_packages=(NETCAT,)),),
            notes=("The container (systemd-nspawn, the Debian systemd guest) needs root.",),
        ),
        Template(
            "pytest",
            "pytest style: machines as fixtures, parametrize, isolated tests",
            (Machine("machine"),),
            default_file="pytest_style.py",  # not pytest.py: see plan()
        ),
        Template(
            "graphical",
            "a screenshot and OCR of a VM's screen",
            (Machine("machine"),),
            notes=("OCR runs tesseract on the host (Debian: tesseract-ocr).",),
            nix_options=("enableOCR = true;",),
        ),
        Template(
            "traced",
            "OpenTelemetry spans of the run, exported to your collector",
            (Machine("machine", nix_packages=("wget",)),),
            notes=(
                "Traces go to the collector the standard variables name, e.g.",
                "  export OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 "
                "OTEL_SERVICE_NAME=my-tests",
                "(Jaeger, Grafana Tempo, an OpenTelemetry Collector: OTLP/HTTP, protobuf).",
            ),
        ),
    )
}


class NewError(Exception):
    """Bad input to `nixos-test-ng new` (exit status 2)."""


def render_script(template: Template, script: str) -> str:
    """The script: a header naming how to run and check it, then the template's body."""
    lines = [
        f"{script}: {template.summary}.",
        f"(written by `nixos-test-ng new {template.name}`)",
        "",
        *template.notes,
        *([""] if template.notes else []),
        "Run it in this folder (on the built-in guests, no Nix needed):",
        f"  {template.run_command(script)}",
        "Check it before booting (unknown names, misspelled methods, wrong arguments):",
        f"  {template.check_command(script)}",
    ]
    header = "".join(f"# {line}".rstrip() + "\n" for line in lines)
    return f"{header}\n{template.body()}"


def render_stubs(template: Template) -> str:
    from nixos_test_ng.check_cli import render_stubs as stubs

    kinds = {m.name: "nspawn" if m.container else "vm" for m in template.machines}
    return stubs(kinds, template.vlans)


def _nix_string(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def _nix_list(items: list[str]) -> str:
    return f"[ {' '.join(items)} ]" if items else "[ ]"


def _nix_path(file: str) -> str:
    """A file beside the Nix expression, as a Nix path."""
    if re.fullmatch(r"[A-Za-z0-9._+-]+", file):
        return f"./{file}"
    return f"(./. + {_nix_string('/' + file)})"


def _nix_machine(m: Machine) -> str:
    attrs = [f"virtualisation.vlans = {_nix_list([str(v) for v in m.vlans])};"]
    if m.nix_packages:
        packages = _nix_list([f"pkgs.{p}" for p in m.nix_packages])
        attrs.append(f"environment.systemPackages = {packages};")
    if m.open_ports:
        ports = _nix_list([str(p) for p in m.open_ports])
        attrs.append(f"networking.firewall.allowedTCPPorts = {ports};")
    args = "{ pkgs, ... }: " if m.nix_packages else ""
    group = "containers" if m.container else "nodes"
    inner = "".join(f"    {a}\n" for a in attrs)
    return f"  {group}.{m.name} = {args}{{\n{inner}  }};\n"


def render_nix(template: Template, script: str, nix_file: str) -> str:
    """A `runNixOSTest` expression with the template's machines and the script."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(script).stem).lstrip(".-") or "test"
    options = "".join(f"  {o}\n" for o in template.nix_options)
    text = (resources.files(__package__) / "templates" / "test.nix.in").read_text()
    for key, value in {
        "@NIX_FILE_SH@": shlex.quote(nix_file),
        "@NIX_FILE_PATH@": _nix_path(nix_file),
        "@NIX_FILE@": nix_file,
        "@SCRIPT_FILE@": script,
        "@TEMPLATE@": template.name,
        "@NAME@": name,
        "@OPTIONS@": options,
        "@MACHINES@": "".join(_nix_machine(m) for m in template.machines),
        "@SCRIPT_PATH@": _nix_path(script),
    }.items():
        text = text.replace(key, value)
    return text


def script_arg(path: Path) -> str:
    """The script as the header's commands name it: its file name (never taken for an option)."""
    return f"./{path.name}" if path.name.startswith("-") else path.name


def _imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def plan(template: Template, output: str | None, stubs: bool, nix: bool) -> dict[Path, str]:
    """Every file to write, with its text."""
    path = Path(output) if output else Path(template.file_name)
    if output and (output.endswith("/") or path.is_dir()):
        path = path / template.file_name
    if path.suffix != ".py":
        raise NewError(f"`{path}`: the test script's file name must end in .py")
    if path.stem in _imports(template.body()):
        raise NewError(
            f"`{path}`: a script named {path.name} would shadow the `{path.stem}` module it"
            " imports (for editors and Python tools in its folder); choose another name"
        )
    files = {path: render_script(template, script_arg(path))}
    if stubs:
        files[path.with_name(STUBS_FILE)] = render_stubs(template)
    if nix:
        nix_path = path.with_suffix(".nix")
        files[nix_path] = render_nix(template, path.name, nix_path.name)
    return files


def _listing() -> str:
    width = max(map(len, TEMPLATES))
    lines = ["templates (nixos-test-ng new TEMPLATE -o FILE.py):"]
    for t in TEMPLATES.values():
        lines.append(f"  {t.name:<{width}}  {t.summary}")
        lines.append(f"  {'':<{width}}  machines: {' '.join(m.run_spec for m in t.machines)}")
    return "\n".join(lines) + "\n"


def _error(message: str) -> int:
    print(f"nixos-test-ng new: error: {message}", file=sys.stderr)
    return ExitStatus.USAGE


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="nixos-test-ng new",
        description="Write a working test script from a template. Its header says how to run "
        "it (`nixos-test-ng run ...`) and check it. Existing files are never overwritten "
        "without --force.",
    )
    p.add_argument("template", nargs="?", help="the template (--list shows them)")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="the script to write, ending in .py (its folder is created), or an existing "
        "folder; default: TEMPLATE.py in the current folder (pytest_style.py for pytest)",
    )
    p.add_argument(
        "--stubs", action="store_true", help=f"also write {STUBS_FILE} beside it (editors)"
    )
    p.add_argument(
        "--nix", action="store_true", help="also write the NixOS test (NAME.nix) beside it"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--list", action="store_true", help="list the templates")
    args = p.parse_args(argv)
    if args.list:
        print(_listing(), end="")
        return ExitStatus.OK
    names = ", ".join(TEMPLATES)
    if args.template is None:
        return _error(f"which template? One of: {names} (--list describes them)")
    template = TEMPLATES.get(args.template)
    if template is None:
        return _error(f"unknown template `{args.template}`; the templates are: {names}")
    try:
        files = plan(template, args.output, args.stubs, args.nix)
    except NewError as e:
        return _error(str(e))
    existing = [str(f) for f in files if f.exists() or f.is_symlink()]
    if existing and not args.force:
        return _error(
            f"refusing to overwrite {', '.join(existing)} (--force overwrites); nothing written"
        )
    script = next(iter(files))
    try:
        script.parent.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text)
    except OSError as e:
        return _error(str(e))
    print(f"wrote {', '.join(map(str, files))} (template `{template.name}`)")
    folder = "" if script.parent == Path() else f"cd {shlex.quote(str(script.parent))} && "
    print(f"run it:   {folder}{template.run_command(script_arg(script))}")
    return ExitStatus.OK
