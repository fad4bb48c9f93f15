"""The build's ``fetch`` init container against real stores on loopback: moto's S3 server (with IAM
authentication) and an HTTPS server. Each failure a user can cause has its own reason, leaves no
file a build could read, and never shows the credentials."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from trtops_worker.builder.errors import BuildError
from trtops_worker.fetch import Get, fetch
from trtops_worker.sources import local_path

from tests.support.object_store import HttpsServer, S3Server, https_server, moto_s3

MODEL = b"\x08\x07" + os.urandom(4096)  # bytes stand in for a model: fetch never parses them
PIN = hashlib.sha256(MODEL).hexdigest()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        client = server.client()
        client.create_bucket(Bucket="models")
        client.put_object(Bucket="models", Key="resnet/model.onnx", Body=MODEL)
        yield server


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    root = tmp_path_factory.mktemp("site")
    (root / "calib.npz").write_bytes(MODEL)
    with https_server(root, tmp_path_factory.mktemp("tls")) as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def failing(get: Get) -> BuildError:
    with pytest.raises(BuildError) as info:
        fetch(get)
    return info.value


def test_s3_object_lands_on_the_claim_and_a_pinned_one_is_fetched_once(
    s3_env: S3Server, tmp_path: Path
) -> None:
    uri = "s3://models/resnet/model.onnx"
    dest = tmp_path / local_path(uri, PIN)
    first = fetch(Get("model", uri, dest, PIN))
    assert dest.read_bytes() == MODEL
    assert (first["sha256"], first["bytes"], first["cached"]) == (PIN, len(MODEL), False)
    # The same pin again is read from the claim: it works with the object gone from the bucket.
    s3_env.client().put_object(Bucket="models", Key="gone.onnx", Body=MODEL)
    again = fetch(Get("model", "s3://models/gone.onnx", dest, PIN))
    assert again["cached"] is True
    assert leftovers(dest.parent) == ["model.onnx"]


def test_unpinned_s3_object_is_fetched_again_after_it_changes(
    s3_env: S3Server, tmp_path: Path
) -> None:
    client = s3_env.client()
    client.put_object(Bucket="models", Key="moving.onnx", Body=b"v1")
    dest = tmp_path / "m.onnx"
    fetch(Get("model", "s3://models/moving.onnx", dest))
    client.put_object(Bucket="models", Key="moving.onnx", Body=b"v2")
    assert fetch(Get("model", "s3://models/moving.onnx", dest))["cached"] is False
    assert dest.read_bytes() == b"v2"


def test_missing_object_and_missing_bucket_are_not_found(s3_env: S3Server, tmp_path: Path) -> None:
    for uri in ("s3://models/resnet/absent.onnx", "s3://no-such-bucket/model.onnx"):
        err = failing(Get("model", uri, tmp_path / "x" / "model.onnx", PIN))
        assert (err.category, err.reason) == ("model", "ModelNotFound"), err.message
        assert uri in err.message
    assert leftovers(tmp_path / "x") == []


def test_wrong_pin_is_a_digest_mismatch_and_leaves_nothing(
    s3_env: S3Server, tmp_path: Path
) -> None:
    wrong = "0" * 64
    err = failing(Get("model", "s3://models/resnet/model.onnx", tmp_path / "m.onnx", wrong))
    assert (err.category, err.reason) == ("model", "ModelDigestMismatch")
    assert PIN in err.message
    assert wrong in err.message
    assert leftovers(tmp_path) == []


def test_wrong_credentials_are_access_denied_and_never_printed(
    s3: S3Server, tmp_path: Path
) -> None:
    """The CLI as the init container runs it: the reason lands in the termination log, and the
    secret key appears neither there nor in the logs."""
    cases = {
        "wrong secret": {"AWS_SECRET_ACCESS_KEY": "wrong-secret-value-123"},
        "unknown key": {
            "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY00000",
            "AWS_SECRET_ACCESS_KEY": "x" * 20,
        },
    }
    for what, override in cases.items():
        env = {**os.environ, **s3.env(**override)}
        log = tmp_path / "termination-log"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "trtops_worker",
                "fetch",
                *("--get", "model", "s3://models/resnet/model.onnx", str(tmp_path / "m.onnx"), PIN),
                *("--termination-log", str(log)),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        result = json.loads(log.read_text())
        assert proc.returncode == 10, (what, proc.stderr)
        assert (result["ok"], result["reason"]) == (False, "ModelAccessDenied"), (what, result)
        for secret in (override["AWS_SECRET_ACCESS_KEY"], s3.secret_key):
            assert secret not in proc.stderr + proc.stdout + log.read_text()
        assert not (tmp_path / "m.onnx").exists()


def test_unreachable_store_is_transient(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.prometheus import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    err = failing(Get("model", "s3://models/resnet/model.onnx", tmp_path / "m.onnx", PIN))
    assert (err.category, err.reason, err.exit_code) == ("fetch", "ModelUnreachable", 17)


def test_https_with_pin_and_its_failures(
    https: HttpsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(https.ca_file))
    dest = tmp_path / "calib.npz"
    done = fetch(Get("calibration", f"{https.url}/calib.npz?sig=abc", dest, PIN))
    assert dest.read_bytes() == MODEL
    assert done["uri"] == f"{https.url}/calib.npz?..."  # a signed URL's query is never shown

    err = failing(Get("calibration", f"{https.url}/absent.npz", tmp_path / "a.npz", PIN))
    assert (err.category, err.reason) == ("calibration", "CalibrationNotFound")
    err = failing(Get("validation", f"{https.url}/calib.npz", tmp_path / "v.npz", "1" * 64))
    assert (err.category, err.reason) == ("config", "ValidationDigestMismatch")
    assert leftovers(tmp_path) == ["calib.npz"]


def test_https_server_not_trusted_is_refused(https: HttpsServer, tmp_path: Path) -> None:
    """Without the server's CA the TLS handshake fails: nothing is fetched unverified."""
    err = failing(Get("model", f"{https.url}/calib.npz", tmp_path / "m.onnx", PIN))
    assert err.reason == "ModelUnreachable"
    assert "certificate" in err.message.lower()
    assert leftovers(tmp_path) == []
