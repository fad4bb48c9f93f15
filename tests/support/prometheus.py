"""A real Prometheus server (Debian's ``prometheus`` package) on loopback, with a config the test
writes: scrape targets in, PromQL out."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PodDiscovery:
    """Feeds Prometheus the cluster's annotated pods through ``file_sd_configs``.

    Debian's Prometheus is built without Kubernetes service discovery, so this thread does what
    ``kubernetes_sd_configs`` + the usual relabelling would: every pod annotated
    ``prometheus.io/scrape: "true"`` that is Running with an IP becomes the target
    ``<podIP>:<prometheus.io/port>`` labelled with its ``namespace`` and ``pod``.
    """

    def __init__(self, target_file: Path, interval: float = 0.5) -> None:
        self.target_file = target_file
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-discovery", daemon=True)

    def start(self) -> None:
        self.write(self.discover())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @staticmethod
    def discover() -> list[dict[str, Any]]:
        out = subprocess.run(
            ["kubectl", "get", "pods", "-A", "-o", "json", "--request-timeout=10s"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        groups = []
        for pod in json.loads(out)["items"]:
            meta, status = pod["metadata"], pod.get("status", {})
            annotations = meta.get("annotations") or {}
            if (
                annotations.get("prometheus.io/scrape") != "true"
                or status.get("phase") != "Running"
            ):
                continue
            if not status.get("podIP") or "prometheus.io/port" not in annotations:
                continue
            groups.append(
                {
                    "targets": [f"{status['podIP']}:{annotations['prometheus.io/port']}"],
                    "labels": {
                        "namespace": meta["namespace"],
                        "pod": meta["name"],
                        "__metrics_path__": annotations.get("prometheus.io/path", "/metrics"),
                    },
                }
            )
        return groups

    def write(self, groups: list[dict[str, Any]]) -> None:
        tmp = self.target_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.target_file)  # Prometheus must never read a half-written file

    def _run(self) -> None:
        last: list[dict[str, Any]] | None = None
        while not self._stop.wait(self.interval):
            try:
                groups = self.discover()
            except (subprocess.SubprocessError, json.JSONDecodeError):
                continue
            if groups != last:
                self.write(groups)
                last = groups


@dataclass
class Prometheus:
    """One Prometheus process; ``jobs`` maps a job name to its ``host:port`` targets."""

    workdir: Path
    jobs: dict[str, list[str]] = field(default_factory=dict)
    scrape_interval: str = "1s"
    # Discover the cluster's annotated pods, as a cluster's Prometheus does.
    discover_pods: bool = False
    discovery: PodDiscovery | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        scrape_configs: list[dict[str, Any]] = [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in self.jobs.items()
        ]
        if self.discover_pods:
            scrape_configs.append(
                {
                    "job_name": "kubernetes-pods",
                    "file_sd_configs": [
                        {"files": [str(self.workdir / "pods.json")], "refresh_interval": "1s"}
                    ],
                }
            )
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": scrape_configs,
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus not found: install Debian's 'prometheus' package (.ci/run does)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.discover_pods:
            self.discovery = PodDiscovery(self.workdir / "pods.json")
            self.discovery.start()
        config = self.write_config()
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.process = self._spawn(binary, config, log)
        self._wait_ready(timeout)

    def _spawn(self, binary: str, config: Path, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives a terminal's Ctrl-C until the caller stops it
        )

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("prometheus did not become ready")

    def reload(self, jobs: dict[str, list[str]]) -> None:
        """Replace the scrape targets and reload the running server."""
        self.jobs = jobs
        self.write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")  # noqa: S310 - loopback
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310 - loopback
            pass

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query (now, or at the Unix time ``at``); returns the ``result`` list (raises
        on a query error)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        qs = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:  # noqa: S310
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"query failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()
        if self.process is not None:
            stop_process(self.process, grace=10)
