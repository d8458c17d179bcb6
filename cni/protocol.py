"""The CNI protocol: environment, stdin, versions, results and errors, as libcni's skel does it.

`dispatch(env, stdin, handlers)` is the whole protocol and touches no process state: the entry
point hands it `os.environ` and the bytes of stdin and writes what it returns. It validates the
environment and the network config, negotiates the version (CHECK needs 0.4.0+, STATUS and GC
1.1.0+), calls one handler and encodes its result, or turns any `CNIError` into the spec's error
object on stdout with exit status 1. Logs never go to stdout.

Hot path (every DEL, and the agent's side of every served call): no `json`, `re` or
`collections` at import. The config is decoded by `cni.jsonread` (json's own C scanner;
`json` itself only for a document it refuses), names are checked character by character, and
`json` is imported to encode an answer only when there is one to encode (an ADD's result, an
error). Annotations that name typing-only names are quoted rather than deferred with
`from __future__ import annotations`: importing `__future__` is another 0.1 ms.
"""

from cni import jsonread
from cni.errors import (
    CNIError,
    DecodingFailure,
    IncompatibleVersion,
    InvalidEnvironment,
    InvalidNetworkConfig,
)
from cni.versions import LATEST_VERSION, SUPPORTED_VERSIONS, about_text, version_json
from cni.wire import MAX_CONFIG_BYTES, read_stdin

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Which environment variables each command requires (libcni skel, plus GC/STATUS from spec 1.1).
_REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_REST = _NAME_FIRST | frozenset("_.-")
_MAX_IFNAME = 15


def _valid_name(name: str) -> bool:
    r"""libcni's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (Go's `$`: no trailing newline either)."""
    return name != "" and name[0] in _NAME_FIRST and all(c in _NAME_REST for c in name)


class CmdArgs:
    """One invocation: the CNI_* environment and the raw network config.

    Fields (all str but `conf`): command, container_id, netns, ifname, args (CNI_ARGS), path,
    netns_override (CNI_NETNS_OVERRIDE), and conf, the network config from stdin as a dict,
    already decoded and validated (name, cniVersion).

    A plain class: a dataclass pulls in `inspect` and `ast`, `typing.NamedTuple` `typing`, and
    `collections.namedtuple` `collections`: milliseconds of imports on every DEL."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "netns_override",
                 "conf")

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, args: str,
                 path: str, netns_override: str, conf: "dict[str, Any]") -> None:
        self.command, self.container_id, self.netns, self.ifname = (
            command, container_id, netns, ifname)
        self.args, self.path, self.netns_override, self.conf = args, path, netns_override, conf

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"CmdArgs({fields})"

    @property
    def version(self) -> str:
        return str(self.conf.get("cniVersion") or "0.1.0")


TYPE_CHECKING = False  # not typing's: importing typing costs every DEL milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, Protocol

    class Handlers(Protocol):
        """What a plugin implements, per command it answers (`dispatch` calls only the one
        the command names); each returns the result object to print (or None for none)."""

        def add(self, args: CmdArgs) -> dict[str, Any]: ...
        def delete(self, args: CmdArgs) -> None: ...
        def check(self, args: CmdArgs) -> None: ...
        def status(self, args: CmdArgs) -> None: ...
        def gc(self, args: CmdArgs) -> None: ...

_METHODS = {"ADD": "add", "DEL": "delete", "CHECK": "check", "STATUS": "status", "GC": "gc"}


def version_tuple(version: str) -> tuple[int, int, int]:
    """Parse "X.Y.Z"; anything else is a decoding failure, as in libcni."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise DecodingFailure(f'invalid cniVersion "{version}": expected X.Y.Z')
    return int(parts[0]), int(parts[1]), int(parts[2])


def error_json(err: CNIError, version: str = LATEST_VERSION) -> bytes:
    """The spec's error object (with cniVersion, as required since spec 1.0)."""
    import json

    obj: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        obj["details"] = err.details
    return (json.dumps(obj) + "\n").encode()


def _required_missing(env: "Mapping[str, str]", command: str) -> list[str]:
    names = ("CNI_COMMAND",) + _REQUIRED_ENV.get(command, ())
    return [n for n in names if not env.get(n)]


def read_config(stream: "BinaryIO") -> bytes:
    """Stdin as `dispatch` takes it: to EOF, but never more than `MAX_CONFIG_BYTES + 1` bytes
    (`cni.wire.read_stdin`)."""
    return read_stdin(stream)


def _decode_conf(stdin: bytes) -> "dict[str, Any]":
    if len(stdin) > MAX_CONFIG_BYTES:
        raise DecodingFailure(
            f"network config on stdin is larger than {MAX_CONFIG_BYTES} bytes"
        )
    try:
        conf = jsonread.loads(stdin)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodingFailure(f"error decoding network config from stdin: {exc}") from exc
    if not isinstance(conf, dict):
        raise DecodingFailure(
            "error decoding network config from stdin: expected a JSON object, "
            f"got {type(conf).__name__}"
        )
    return conf


def _validate_conf(conf: "dict[str, Any]") -> None:
    name = conf.get("name")
    if name is None or name == "":
        raise InvalidNetworkConfig("missing network name")
    if not isinstance(name, str) or not _valid_name(name):
        raise InvalidNetworkConfig("invalid characters found in network name", repr(name))
    version = conf.get("cniVersion", "0.1.0")
    if not isinstance(version, str):
        raise DecodingFailure(f"invalid cniVersion {version!r}: expected a string")
    version_tuple(version or "0.1.0")
    if (version or "0.1.0") not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )


def _validate_ids(env: "Mapping[str, str]", command: str) -> None:
    if command not in ("ADD", "DEL", "CHECK"):
        return
    container_id = env.get("CNI_CONTAINERID", "")
    if not _valid_name(container_id):
        raise InvalidEnvironment("invalid characters in containerID", container_id)
    ifname = env.get("CNI_IFNAME", "")
    if len(ifname) > _MAX_IFNAME or ifname in (".", "..") or any(
        c in ifname for c in "/:" + " \t\n"
    ):
        raise InvalidEnvironment("invalid interface name", ifname)


def _has_bytes(value: str) -> bool:
    """True if `value` is bytes the process could have been given (os.fsencode succeeds)."""
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _require_version(version: str, minimum: str, command: str) -> None:
    if version_tuple(version) < version_tuple(minimum):
        raise IncompatibleVersion(f"config version does not allow {command}", f"needs {minimum}+")


def parse_request(env: "Mapping[str, str]", stdin: bytes) -> CmdArgs:
    """Validate env and stdin the way skel does, in skel's order; raise CNIError on failure."""
    command = env.get("CNI_COMMAND", "")
    if command and command not in COMMANDS:
        raise InvalidEnvironment(f"unknown CNI_COMMAND: {command}")
    missing = _required_missing(env, command)
    if missing:
        raise InvalidEnvironment(f"required env variables [{','.join(missing)}] missing")
    bad = sorted(k for k, v in env.items() if k.startswith("CNI_") and "\x00" in v)
    if bad:  # cannot come through execve, but dispatch is also called in-process
        raise InvalidEnvironment(f"env variables {bad} contain a NUL byte")
    bad = sorted(k for k, v in env.items() if k.startswith("CNI_") and not _has_bytes(v))
    if bad:  # likewise: a lone surrogate from a JSON escape has no bytes to be a path or a name
        raise InvalidEnvironment(f"env variables {bad} hold a lone surrogate, which no path "
                                 "or name can")
    conf: dict[str, Any] = {}
    if command != "VERSION":
        conf = _decode_conf(stdin)
        _validate_conf(conf)
        _validate_ids(env, command)
    args = CmdArgs(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=env.get("CNI_ARGS", ""),
        path=env.get("CNI_PATH", ""),
        netns_override=env.get("CNI_NETNS_OVERRIDE", ""),
        conf=conf,
    )
    if command == "CHECK":
        _require_version(args.version, "0.4.0", "CHECK")
    elif command in ("STATUS", "GC"):
        _require_version(args.version, "1.1.0", command)
    return args


def _call(handlers: "Handlers", args: CmdArgs) -> "dict[str, Any] | None":
    result: dict[str, Any] | None = getattr(handlers, _METHODS[args.command])(args)
    return result


def dispatch(
    env: "Mapping[str, str]",
    stdin: bytes,
    handlers: "Handlers",
    about: str = "CNI plugin istio-cni",
    on_internal_error: "Callable[[BaseException], None] | None" = None,
    reraise: tuple[type[BaseException], ...] = (),
) -> tuple[bytes, bytes, int]:
    """Run one CNI call. Returns (stdout, stderr, exit status); never raises, but for the
    `reraise` exceptions that are not a `CNIError` (the agent's: "not mine to answer")."""
    version = LATEST_VERSION
    try:
        if not env.get("CNI_COMMAND"):
            return b"", about_text(about).encode(), 0
        args = parse_request(env, stdin)
        if args.command == "VERSION":
            return version_json(), b"", 0
        version = args.version
        result = _call(handlers, args)
        if result is None:
            return b"", b"", 0
        import json

        return (json.dumps(result) + "\n").encode(), b"", 0
    except CNIError as err:
        return error_json(err, version), b"", 1
    except reraise:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary: anything else is ErrInternal
        if on_internal_error is not None:
            on_internal_error(exc)
        err = CNIError(f"internal error: {type(exc).__name__}: {exc}")
        return error_json(err, version), b"", 1


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS "K=V;K=V" as libcni's LoadArgs: every pair needs exactly one "=", and unknown
    keys are refused unless IgnoreUnknown is true (containerd and CRI-O always send it)."""
    known = {"IgnoreUnknown", "K8S_POD_NAME", "K8S_POD_NAMESPACE",
             "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}
    if raw == "":
        return {}
    pairs: dict[str, str] = {}
    for item in raw.split(";"):
        kv = item.split("=")
        if len(kv) != 2:
            raise InvalidEnvironment(f"CNI_ARGS: invalid pair {item!r}: expected KEY=VALUE", raw)
        pairs[kv[0]] = kv[1]
    ignore_unknown = pairs.get("IgnoreUnknown", "").lower() in ("1", "true", "t")
    unknown = sorted(k for k in pairs if k not in known)
    if unknown and not ignore_unknown:
        raise InvalidEnvironment(
            f"CNI_ARGS: unknown args {unknown} (set IgnoreUnknown=1 to allow them)", raw
        )
    return pairs
