"""What shadowing costs the client: one stable ``trtops-worker serve`` with the shadow off, then
with ``--shadow-percent`` of its requests shadowed to a candidate (another serve process), the
same requests at concurrency 1, side by side from one run. Also prints the shadow outcomes.

The shadow adds no wait to a request (it is offered after the answer, to a bounded queue); what
it can add is CPU on the stable pod (encoding, the candidate's answer, the comparison), which
shows as latency when the cores are busy. A script, not a test: numbers depend on the machine.

Usage::

    python bench/shadow_overhead.py [--requests 400] [--percent 100] [--image-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trtops_worker import samples
from trtops_worker.bench.clients import http_infer_body

from tests.support.worker import Server, start_server


def _latencies(server: Server, body: bytes, head: int, n: int) -> list[float]:
    url = server.infer_url("conv")
    headers = {"Inference-Header-Content-Length": str(head)}
    out: list[float] = []
    with requests.Session() as s:
        for _ in range(n):
            t = time.perf_counter()
            r = s.post(url, data=body, headers=headers, timeout=30)
            out.append(time.perf_counter() - t)
            r.raise_for_status()
    return out


def _q(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q * 100) - 1] * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--percent", type=float, default=100.0)
    p.add_argument("--image-size", type=int, default=32)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    model = tmp / "conv.onnx"
    samples.save(samples.conv_classifier(width=8, image_size=a.image_size), model)
    x = np.random.default_rng(0).normal(size=(1, 3, a.image_size, a.image_size)).astype("float32")
    body, head = http_infer_body({"input": x}, binary=True)
    common = ("--model", str(model), "--model-name", "conv", "--front-ends", "1")
    candidate = start_server(tmp, *common, "--revision", "cand", "--intra-op-threads", "1")
    rows = []
    try:
        for label, extra in (
            ("shadow off", ()),
            (
                f"shadow {a.percent:g} %",
                ("--shadow-url", candidate.infer_url("conv"), "--shadow-percent", str(a.percent)),
            ),
        ):
            stable = start_server(
                tmp, *common, "--revision", "stab", "--intra-op-threads", "1", *extra
            )
            try:
                _latencies(stable, body, head, 50)  # warm up
                lat = _latencies(stable, body, head, a.requests)
                time.sleep(1.0)
                outcomes = {
                    o: stable.metric("trtops_shadow_requests_total", outcome=o)
                    for o in ("compared", "dropped", "failed", "mismatch")
                }
                rows.append((label, _q(lat, 0.5), _q(lat, 0.99), outcomes))
            finally:
                stable.stop()
    finally:
        candidate.stop()
    print(f"{a.requests} requests at concurrency 1, batch 1, {a.image_size}x{a.image_size} conv")
    print(f"{'':14} {'p50 ms':>8} {'p99 ms':>8}  shadow outcomes")
    for label, p50, p99, outcomes in rows:
        shown = ", ".join(f"{k} {v:.0f}" for k, v in outcomes.items() if v)
        print(f"{label:14} {p50:8.3f} {p99:8.3f}  {shown or '-'}")
    (_, p50_off, p99_off, _), (_, p50_on, p99_on, _) = rows
    print(f"ratio on/off   p50 {p50_on / p50_off:.2f}x  p99 {p99_on / p99_off:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
