"""The stand-ins' command lines: what a driver passes to firecracker and cloud-hypervisor.

Bad arguments print an error naming the argument to stderr and exit 1.
"""

from __future__ import annotations

import sys

from .runner import RunnerSelectionError, create_runner
from .server import SocketInUse, serve

USAGE_EXIT = 1


class ArgumentError(Exception):
    pass


def _parse(argv: list[str], flags: set[str], valued: set[str]) -> dict[str, str | bool]:
    """Long options (`--name value` or `--name=value`) and flags; ArgumentError otherwise."""
    out: dict[str, str | bool] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if name in flags and not eq:
            out[name] = True
        elif name in valued:
            if eq:
                out[name] = inline
            elif args and not args[0].startswith("--"):
                out[name] = args.pop(0)
            else:
                raise ArgumentError(
                    f"The argument '{name}' requires a value, but none was supplied."
                )
        else:
            raise ArgumentError(
                f"Found argument '{arg}' which wasn't expected, or isn't valid in this context."
            )
    return out


def _fail(message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    return USAGE_EXIT


def firecracker_main(argv: list[str]) -> int:
    from .firecracker_api import FirecrackerApi

    try:
        args = _parse(
            argv,
            flags={"--no-seccomp", "--boot-timer"},
            valued={"--api-sock", "--id", "--level", "--log-path"},
        )
    except ArgumentError as err:
        return _fail(f"Arguments parsing error: {err}\n\nFor more information try --help.")
    socket = args.get("--api-sock")
    if not isinstance(socket, str) or not socket:
        return _fail("Arguments parsing error: the stand-in needs --api-sock PATH.")
    log_path = args.get("--log-path")
    if isinstance(log_path, str):
        try:
            open(log_path, "a").close()
        except OSError as err:
            return _fail(f"Failed to open the log file {log_path}: {err.strerror}")
    try:
        runner = create_runner("firecracker")
    except RunnerSelectionError as err:
        return _fail(f"firecracker stand-in: {err}")
    api = FirecrackerApi(runner, instance_id=str(args.get("--id", "anonymous-instance")))
    try:
        return serve(api, socket, "Firecracker API")
    except SocketInUse:
        return _fail(
            f"Failed to open the API socket at: {socket}. Check that it is not already used."
        )
    except OSError as err:
        return _fail(f"Failed to open the API socket at: {socket}: {err.strerror}")


def _api_socket_path(value: str) -> str:
    """`--api-socket` takes a path or `path=PATH` (Cloud Hypervisor also knows `fd=N`)."""
    if "=" not in value:
        return value
    options = dict(part.partition("=")[::2] for part in value.split(","))
    if set(options) != {"path"} or not options["path"]:
        raise ArgumentError(
            f"the stand-in takes --api-socket PATH or --api-socket path=PATH, not {value!r}"
        )
    return options["path"]


def cloud_hypervisor_main(argv: list[str]) -> int:
    from .cloud_hypervisor_api import CloudHypervisorApi

    argv = [arg for arg in argv if arg.lstrip("-v") != "" or not arg.startswith("-v")]
    try:
        args = _parse(argv, flags=set(), valued={"--api-socket", "--log-file", "--seccomp"})
        value = args.get("--api-socket")
        if not isinstance(value, str) or not value:
            raise ArgumentError("the stand-in needs --api-socket PATH")
        socket = _api_socket_path(value)
        if args.get("--seccomp", "false") not in ("true", "false", "log"):
            raise ArgumentError(f"invalid value {args['--seccomp']!r} for '--seccomp'")
    except ArgumentError as err:
        return _fail(f"error: {err}")
    log_file = args.get("--log-file")
    if isinstance(log_file, str):
        try:
            open(log_file, "a").close()
        except OSError as err:
            return _fail(f"error: cannot open the log file {log_file}: {err.strerror}")
    try:
        runner = create_runner("cloud-hypervisor")
    except RunnerSelectionError as err:
        return _fail(f"cloud-hypervisor stand-in: {err}")
    try:
        return serve(CloudHypervisorApi(runner), socket, "Cloud Hypervisor API", replace_stale=True)
    except OSError as err:
        return _fail(f"error: cannot create the API socket {socket}: {err.strerror}")
