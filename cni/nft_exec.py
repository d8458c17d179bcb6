"""Two ways to run nftables commands in the current thread's netns: libnftables or `nft -f -`.

Why two: upstream's plugin shells out to the host's `nft` and so fails every ADD on a host
without the binary. libnftables, loaded in-process through ctypes (and bundled with the frozen
plugin), needs no binary; the host's `nft -f -` is the fallback when the library is missing.
Both take the same text (one command per line) and return what nft prints, so everything above
this module is the same whichever way is used.

Netns: `setns` is per thread. A libnftables context is created and freed inside each `run`, so
its netlink socket always belongs to the netns the calling thread is in at that moment; `nft` is
a child process of this thread, so it inherits the same netns.

The frozen plugin carries libnftables and every library it links in `<bundle>/nftables`
(build.spec), loaded by absolute path in the bundle's `load-order`: each dependency is then
already loaded under its soname when libnftables needs it, so the host's library path is never
searched, and the host needs neither `nft` nor libnftables.

Nothing heavy is imported until a way is chosen: ctypes only by `LibNftables`, subprocess only
by `NftBinary`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

from cni.settings import NFTABLES_BACKENDS

WAYS = NFTABLES_BACKENDS
LIBRARY = "libnftables.so.1"
NFT_TIMEOUT_S = 10.0
MAX_OUTPUT = 4 << 20
"""A pod netns holds a few hundred lines of rules; anything near this is not ours to parse."""
NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")
NFT_CTX_OUTPUT_JSON = 1 << 4
"""libnftables' output flag for JSON (`nft -j`)."""
LOAD_ORDER = "load-order"
MAX_LOAD_ORDER = 4096


def bundled_nftables_dir() -> str | None:
    """`<bundle>/nftables` of a frozen build (PyInstaller; see build.spec), else None."""
    if not getattr(sys, "frozen", False):
        return None
    base = getattr(sys, "_MEIPASS", None) or os.path.dirname(sys.executable)
    path = os.path.join(base, "nftables")
    return path if os.path.isfile(os.path.join(path, LOAD_ORDER)) else None


def _load_bundled(ctypes: Any, path: str) -> Any:
    """Load the bundle's libraries in its order (dependencies first); the last one loaded
    under LIBRARY's name is libnftables itself."""
    with open(os.path.join(path, LOAD_ORDER), "rb") as f:
        names = f.read(MAX_LOAD_ORDER).decode().split()
    loaded = {name: ctypes.CDLL(os.path.join(path, os.path.basename(name)), use_errno=True)
              for name in names}
    return loaded[LIBRARY]


class NftError(Exception):
    """nftables refused or failed a command batch; the message is nft's own error text."""


class Nft(Protocol):
    name: str

    def run(self, commands: str, json: bool = False) -> str:
        """Run `commands` (one per line) as one batch; return the output, in nftables' JSON
        form with `json` (one `list` command per call: nft 1.0 prints nothing for several).
        Raises NftError."""


class LibNftables:
    """libnftables through ctypes: `nft_run_cmd_from_buffer` with buffered output and errors."""

    name = "libnftables"

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    @classmethod
    def load(cls) -> LibNftables | None:
        """The bundled library in a frozen build, else the host's; None when neither loads."""
        import ctypes

        bundle = bundled_nftables_dir()
        try:
            if bundle is not None:
                lib = _load_bundled(ctypes, bundle)
            else:
                lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except (OSError, KeyError):
            return None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        return cls(lib)

    def run(self, commands: str, json: bool = False) -> str:
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("libnftables: cannot create a context")
        try:
            if json:
                flags = self._lib.nft_ctx_output_get_flags(ctx)
                self._lib.nft_ctx_output_set_flags(ctx, flags | NFT_CTX_OUTPUT_JSON)
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            rc = self._lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            self._lib.nft_ctx_free(ctx)
        if rc != 0:
            raise NftError(err.strip() or f"libnftables: command batch failed (rc {rc})")
        if len(out) > MAX_OUTPUT:
            raise NftError(f"libnftables: output over {MAX_OUTPUT} bytes")
        return out


class NftBinary:
    """The host's `nft -f -`: the batch on stdin, bounded in time and output."""

    name = "nft"

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def find(cls) -> NftBinary | None:
        import shutil

        path = shutil.which("nft") or next(
            (p for p in NFT_PATHS if os.access(p, os.X_OK)), None)
        return cls(path) if path else None

    def run(self, commands: str, json: bool = False) -> str:
        import subprocess

        from cni.backends.restore import host_env  # the host's nft loads the host's libraries

        try:
            # `nft -j -f -` reads its input as JSON: a JSON listing is asked for on the
            # command line (our own fixed words, never a pod's text)
            argv = ([self.path, "-j", *commands.split()] if json
                    else [self.path, "-f", "-"])
            proc = subprocess.run(argv, input=b"" if json else commands.encode(),
                                  capture_output=True, timeout=NFT_TIMEOUT_S, check=False,
                                  env=host_env(None))
        except subprocess.TimeoutExpired:
            raise NftError(f"{self.path}: no answer within {NFT_TIMEOUT_S:g}s") from None
        except OSError as exc:
            raise NftError(f"{self.path}: {exc.strerror}") from exc
        if proc.returncode != 0:
            err = proc.stderr[:MAX_OUTPUT].decode(errors="replace").strip()
            raise NftError(err or f"{self.path}: exit status {proc.returncode}")
        if len(proc.stdout) > MAX_OUTPUT:
            raise NftError(f"{self.path}: output over {MAX_OUTPUT} bytes")
        return proc.stdout.decode(errors="replace")


def select_nft(way: str) -> Nft:
    """The way called `way` (one of WAYS); `auto` prefers the library, then the binary.

    Raises ValueError for an unknown name and NftError when the chosen way is unavailable."""
    if way not in WAYS:
        raise ValueError(f"unknown nftables way {way!r}: expected one of {', '.join(WAYS)}")
    if way in ("auto", "libnftables"):
        lib = LibNftables.load()
        if lib is not None:
            return lib
        if way == "libnftables":
            raise NftError(f"{LIBRARY} cannot be loaded")
    binary = NftBinary.find()
    if binary is None:
        raise NftError(
            f"no nft binary found (PATH, {', '.join(NFT_PATHS)})"
            + (f" and {LIBRARY} cannot be loaded" if way == "auto" else ""))
    return binary
