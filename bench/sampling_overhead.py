"""What request sampling costs the client: one ``trtops-worker serve`` without sampling, then
the same with ``--sample-dir`` (every answered request offered to the sampler), the same
requests at concurrency 1, side by side from one run. Also prints the sampler's row counts and
the file it wrote.

A request only appends a reference to a bounded queue; choosing, copying and writing happen in
a background task and a thread of the same process, which shows as latency only when the cores
are busy. A script, not a test: numbers depend on the machine.

Usage::

    python bench/sampling_overhead.py [--requests 400] [--image-size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trtops_worker import samples
from trtops_worker.bench.clients import http_infer_body

from bench.shadow_overhead import _latencies, _q
from tests.support.worker import start_server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--image-size", type=int, default=32)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sampling-bench-"))
    model = tmp / "conv.onnx"
    samples.save(samples.conv_classifier(width=8, image_size=a.image_size), model)
    common = ("--model", str(model), "--model-name", "conv", "--front-ends", "1")
    common += ("--revision", "r1", "--intra-op-threads", "1")
    rng = np.random.default_rng(0)
    rows = []
    for label, extra in (("sampling off", ()), ("sampling on", ("--sample-dir", str(tmp / "s")))):
        server = start_server(tmp, *common, *extra)
        try:
            x = rng.normal(size=(1, 3, a.image_size, a.image_size)).astype("float32")
            body, head = http_infer_body({"input": x}, binary=True)
            _latencies(server, body, head, 50)  # warm up
            lat = _latencies(server, body, head, a.requests)
            time.sleep(0.5)
            counts = {
                o: server.metric("trtops_sample_rows_total", outcome=o)
                for o in ("offered", "dropped", "skipped")
            }
        finally:
            server.stop()  # the sampler writes its file on the way out
        rows.append((label, _q(lat, 0.5), _q(lat, 0.99), counts))
    files = sorted((tmp / "s").rglob("*.npz"))
    print(f"{a.requests} requests at concurrency 1, batch 1, {a.image_size}x{a.image_size} conv")
    print(f"{'':14} {'p50 ms':>8} {'p99 ms':>8}  sampler rows")
    for label, p50, p99, counts in rows:
        shown = ", ".join(f"{k} {v:.0f}" for k, v in counts.items() if v)
        print(f"{label:14} {p50:8.3f} {p99:8.3f}  {shown or '-'}")
    (_, p50_off, p99_off, _), (_, p50_on, p99_on, _) = rows
    print(f"ratio on/off   p50 {p50_on / p50_off:.2f}x  p99 {p99_on / p99_off:.2f}x")
    for f in files:
        with np.load(f) as npz:
            print(
                f"written: {f.relative_to(tmp)}: {len(npz['input'])} rows, {f.stat().st_size} bytes"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
