"""`istio-cni-node explain --pod-file` reads at most a pod's worth: /dev/zero is one clear line.

Run as a process with its address space capped, so that a reader without a bound fails the test
(MemoryError) instead of exhausting the machine; the subprocess timeout bounds it in time.
"""

from __future__ import annotations

import resource
import subprocess
import sys

from cni.podlookup import MAX_POD_BYTES

ADDRESS_SPACE = 2 * 1024**3


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_explain_pod_file_dev_zero_is_refused_at_the_pod_limit() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "admin.cli", "explain", "--pod-file", "/dev/zero"],
        capture_output=True, text=True, timeout=120, check=False, preexec_fn=_cap_memory,
    )

    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        f"Error: cannot read /dev/zero: larger than {MAX_POD_BYTES} bytes"
    ), proc.stderr
