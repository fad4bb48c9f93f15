"""Real object stores on loopback for the fetch tests: moto's S3 server and an HTTPS file server.

- :func:`moto_s3` runs ``python -m moto.server`` (PyPI ``moto[server]``) with IAM authentication on
  (``INITIAL_NO_AUTH_ACTION_COUNT``): the first three calls make a user, its policy and its access
  key, and every request after that must be signed with that key, so wrong credentials are
  refused the way S3 refuses them (``InvalidAccessKeyId``, ``SignatureDoesNotMatch``).
- :func:`https_server` serves a folder over TLS with a throwaway self-signed certificate (made
  by the ``openssl`` command); clients trust it through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cluster import stop_process, wait_for
from tests.support.prometheus import free_port

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, secret_key: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    def env(self, **override: str) -> dict[str, str]:
        """The variables a credentials Secret would set in the fetch container."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_MAX_ATTEMPTS": "1",
            **override,
        }


@contextlib.contextmanager
def moto_s3(tmp: Path) -> Iterator[S3Server]:
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp / "moto.log").open("wb")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for(
            lambda: urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).status == 200,  # noqa: S310
            timeout=60,
            what="moto server",
        )
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",  # noqa: S106 - not checked before IAM is on
        )
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        stop_process(proc, 10)
        log.close()


@dataclass(frozen=True)
class HttpsServer:
    url: str  # https://127.0.0.1:PORT
    ca_file: Path


@contextlib.contextmanager
def https_server(root: Path, tmp: Path) -> Iterator[HttpsServer]:
    """Serve ``root`` over HTTPS on loopback until the context ends."""
    key, cert = tmp / "tls.key", tmp / "tls.crt"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpsServer(f"https://127.0.0.1:{server.server_address[1]}", cert)
    finally:
        server.shutdown()
        server.server_close()
