"""cni.kubeconfig: the installer's kubeconfig loads back, common ones load, errors are clear."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cni.errors import PluginNotAvailable
from cni.kubeconfig import MAX_FILE_BYTES, KubeAccess, load_kubeconfig, render_kubeconfig

TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-token-value"
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

# The shape of upstream's cni/pkg/install/testdata/kubeconfig-tls (sigs.k8s.io/yaml output).
UPSTREAM_YAML = f"""\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {base64.b64encode(CA).decode()}
    server: https://10.96.0.1:443
  name: local
contexts:
- context:
    cluster: local
    user: istio-cni
  name: istio-cni-context
current-context: istio-cni-context
kind: Config
users:
- name: istio-cni
  user:
    token: {TOKEN}
"""


def write(tmp_path: Path, text: str, name: str = "kubeconfig") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_render_has_upstream_structure() -> None:
    doc = json.loads(render_kubeconfig("https://10.96.0.1:443", TOKEN, CA, insecure=False))

    assert doc["current-context"] == "istio-cni-context"
    assert doc["contexts"] == [
        {"name": "istio-cni-context", "context": {"cluster": "local", "user": "istio-cni"}}
    ]
    assert doc["clusters"] == [
        {
            "name": "local",
            "cluster": {
                "server": "https://10.96.0.1:443",
                "certificate-authority-data": base64.b64encode(CA).decode(),
            },
        }
    ]
    assert doc["users"] == [{"name": "istio-cni", "user": {"token": TOKEN}}]
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "Config")


def test_render_insecure_wins_over_ca() -> None:
    doc = json.loads(render_kubeconfig("https://[fd00::1]:443", TOKEN, CA, insecure=True))

    assert doc["clusters"][0]["cluster"] == {
        "server": "https://[fd00::1]:443",
        "insecure-skip-tls-verify": True,
    }


@pytest.mark.parametrize(
    ("ca", "insecure", "want_ca", "want_insecure"),
    [(CA, False, CA, False), (None, True, None, True), (None, False, None, False)],
)
def test_rendered_kubeconfig_loads_back(
    tmp_path: Path, ca: bytes | None, insecure: bool, want_ca: bytes | None, want_insecure: bool
) -> None:
    path = write(tmp_path, render_kubeconfig("https://10.96.0.1:443", TOKEN, ca, insecure))

    assert load_kubeconfig(path) == KubeAccess(
        server="https://10.96.0.1:443",
        token=TOKEN,
        ca_data=want_ca,
        insecure_skip_tls_verify=want_insecure,
        source=path,
    )


def test_loads_upstream_yaml(tmp_path: Path) -> None:
    access = load_kubeconfig(write(tmp_path, UPSTREAM_YAML))

    assert (access.server, access.token, access.ca_data) == ("https://10.96.0.1:443", TOKEN, CA)


def test_json_kubeconfig_does_not_import_yaml(tmp_path: Path) -> None:
    """The hot path: a JSON kubeconfig is read without paying for `import yaml`."""
    path = write(tmp_path, render_kubeconfig("https://10.96.0.1:443", TOKEN, CA, False))
    code = textwrap.dedent(
        f"""
        import sys
        from cni.kubeconfig import load_kubeconfig
        load_kubeconfig({path!r})
        print("yaml" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resolves_current_context_among_several(tmp_path: Path) -> None:
    doc = {
        "current-context": "b",
        "contexts": [
            {"name": "a", "context": {"cluster": "one", "user": "u1"}},
            {"name": "b", "context": {"cluster": "two", "user": "u2"}},
        ],
        "clusters": [
            {"name": "one", "cluster": {"server": "https://one:6443"}},
            {
                "name": "two",
                "cluster": {"server": "https://two:6443/", "certificate-authority": "ca.crt"},
            },
        ],
        "users": [{"name": "u1", "user": {"token": "t1"}}, {"name": "u2", "user": {"token": "t2"}}],
    }
    path = write(tmp_path, json.dumps(doc))

    access = load_kubeconfig(path)

    assert (access.server, access.token) == ("https://two:6443", "t2")
    assert access.ca_file == str(tmp_path / "ca.crt")  # relative to the kubeconfig's directory


def test_token_file_and_client_certificates(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    text = f"""\
    current-context: c
    contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
    clusters: [{{name: k, cluster: {{server: "http://127.0.0.1:8080"}}}}]
    users:
    - name: u
      user:
        tokenFile: token
        client-certificate-data: {base64.b64encode(b"CERT").decode()}
        client-key-data: {base64.b64encode(b"KEY").decode()}
    """
    access = load_kubeconfig(write(tmp_path, textwrap.dedent(text)))

    assert access.token == TOKEN
    assert (access.client_cert_data, access.client_key_data) == (b"CERT", b"KEY")


def test_user_without_credentials_is_anonymous(tmp_path: Path) -> None:
    doc = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k"}}],
        "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:8080"}}],
    }
    assert load_kubeconfig(write(tmp_path, json.dumps(doc))).token is None


def test_token_is_not_in_repr(tmp_path: Path) -> None:
    access = load_kubeconfig(write(tmp_path, UPSTREAM_YAML))
    assert TOKEN not in repr(access)


def _replace(old: str, new: str) -> str:
    assert old in UPSTREAM_YAML
    return UPSTREAM_YAML.replace(old, new)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("clusters: [\n  - {name: x\n", "not valid YAML or JSON"),
        ("[1, 2]", "not a mapping"),
        ("apiVersion: v1\nkind: Config\n", "no current-context"),
        (_replace("current-context: istio-cni-context", "current-context: other"), "'other'"),
        (_replace("    cluster: local\n", "    cluster: elsewhere\n"), "'elsewhere'"),
        (_replace("server: https://10.96.0.1:443", "insecure-skip-tls-verify: true"), "no server"),
        (_replace("server: https://10.96.0.1:443", "server: 10.96.0.1:443"), "not an http(s)"),
        (_replace("server: https://10.96.0.1:443", "server: https://h:99999"), "not a valid URL"),
        (_replace("certificate-authority-data: ", "certificate-authority-data: ~~"), "base64"),
    ],
)
def test_invalid_kubeconfig(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(PluginNotAvailable) as caught:
        load_kubeconfig(path)

    assert caught.value.code == 50
    assert path in caught.value.msg
    assert reason in caught.value.msg
    assert TOKEN not in caught.value.msg


def test_missing_kubeconfig(tmp_path: Path) -> None:
    path = str(tmp_path / "istio-cni-kubeconfig")

    with pytest.raises(PluginNotAvailable, match="does not exist") as caught:
        load_kubeconfig(path)

    assert path in caught.value.msg


def test_unreadable_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(PluginNotAvailable, match="cannot read"):
        load_kubeconfig(str(tmp_path))  # a directory: unreadable as a file, even for root


def test_unreadable_token_file(tmp_path: Path) -> None:
    doc = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:8080"}}],
        "users": [{"name": "u", "user": {"tokenFile": "missing-token"}}],
    }
    with pytest.raises(PluginNotAvailable, match="tokenFile"):
        load_kubeconfig(write(tmp_path, json.dumps(doc)))


# --- files that are not what they seem: an error naming the path, never a hang --------------

LOAD_AND_TLS = """
import sys
from cni.errors import CNIError
from cni.kubeconfig import load_kubeconfig
from cni.podlookup import tls_context
try:
    tls_context(load_kubeconfig(sys.argv[1]))
except CNIError as exc:
    print(exc.code, exc.msg)
else:
    print("loaded")
"""


def load_elsewhere(path: str) -> str:
    """Load `path` and build its TLS context in a fresh process: if a read blocks, the test fails
    by `subprocess.run`'s timeout instead of hanging the session."""
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_TLS, path], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.strip()


def kubeconfig_naming(tmp_path: Path, cluster: dict, user: dict) -> str:
    doc = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443", **cluster}}],
        "users": [{"name": "u", "user": user}],
    }
    return write(tmp_path, json.dumps(doc))


def test_fifo_as_the_kubeconfig_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "istio-cni-kubeconfig"
    os.mkfifo(fifo)

    assert load_elsewhere(str(fifo)) == f"50 load kubeconfig {fifo}: cannot read: " \
        "not a regular file (a FIFO)"


def test_device_as_the_kubeconfig_is_an_error(tmp_path: Path) -> None:
    link = tmp_path / "istio-cni-kubeconfig"
    link.symlink_to("/dev/null")  # links are followed: what counts is what is opened

    with pytest.raises(PluginNotAvailable, match="not a regular file \\(a character device\\)"):
        load_kubeconfig(str(link))


def test_oversized_kubeconfig_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM_YAML + "#" * MAX_FILE_BYTES)

    with pytest.raises(PluginNotAvailable, match=f"larger than {MAX_FILE_BYTES} bytes") as caught:
        load_kubeconfig(path)

    assert path in caught.value.msg


@pytest.mark.parametrize(
    ("cluster", "user", "named"),
    [
        ({"insecure-skip-tls-verify": True}, {"tokenFile": "token"}, "tokenFile"),
        ({"certificate-authority": "token"}, {"token": TOKEN}, "certificate-authority"),
        ({"insecure-skip-tls-verify": True},
         {"client-certificate": "token", "client-key": "key"}, "client-certificate"),
    ],
)
def test_fifo_named_by_the_kubeconfig_is_an_error_not_a_hang(
    tmp_path: Path, cluster: dict, user: dict, named: str
) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    path = kubeconfig_naming(tmp_path, cluster, user)

    out = load_elsewhere(path)

    assert out.startswith(f"50 load kubeconfig {path}: "), out
    assert f"{named} {fifo}" in out and "not a regular file (a FIFO)" in out, out


def test_files_named_by_the_kubeconfig_may_be_links(tmp_path: Path) -> None:
    """Secret and projected-token mounts are links (`token -> ..data/token`): they still load."""
    from testbed.kubeapi.tls import make_tls_material, openssl_available

    if not openssl_available():
        pytest.skip("the openssl CLI is needed to make a test CA")
    data = tmp_path / "..data"
    data.mkdir()
    (data / "token").write_text(TOKEN + "\n")
    (data / "ca.crt").write_bytes(make_tls_material(tmp_path / "tls").ca_pem)
    for name in ("token", "ca.crt"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    path = kubeconfig_naming(tmp_path, {"certificate-authority": "ca.crt"}, {"tokenFile": "token"})

    assert load_elsewhere(path) == "loaded"
    assert load_kubeconfig(path).token == TOKEN


def test_token_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"\xff\xfe binary")
    path = kubeconfig_naming(tmp_path, {}, {"tokenFile": "token"})

    with pytest.raises(PluginNotAvailable, match="tokenFile .*token is not UTF-8 text"):
        load_kubeconfig(path)
