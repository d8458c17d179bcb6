"""The CNI spec versions we speak, and the answers that need nothing else: VERSION and the
about text. Kept apart (no imports at all) so that `VERSION` starts the interpreter, writes
and exits: runtimes call it often (on every config load, CRI-O on every pod)."""

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"


def version_json() -> bytes:
    """VERSION's answer: the latest version we speak and every version we accept (the same
    bytes `json.dumps` gives, without importing json)."""
    versions = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": "{LATEST_VERSION}", "supportedVersions": [{versions}]}}\n'.encode()


def about_text(about: str) -> str:
    return f"{about}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n"
