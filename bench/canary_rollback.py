"""Canary benchmark (issue 6): how fast a bad canary is rolled back, and whether good ones are not.

Everything is real: the local control plane, the local node agent running the operator's build
Jobs and serving pods as processes, a Prometheus scraping the workers, ``trtops-operator`` as a
subprocess, and traffic through the local gateway that follows the HTTPRoute weights.

The stable revision is ``models/conv.onnx`` at FP32. Then:

  (a) ``--runs`` bad canaries, each a new spec generation serving ``models/conv-heavy.onnx``
      (~50x the compute: it breaches the canary/stable p99 ratio because of what it serves) with a
      distinct ``build.workspaceMiB`` so that every run is a new plan key and revision; analysis
      every 10 s, ``failureLimit: 2``. Measured: the canary's first request through the gateway
      to its weight 0 on the HTTPRoute; the outcome must be ``RolledBack``. The stable stays.
  (b) ``--runs`` good canaries serving the same model as stable (conv FP32, another workspace
      size, so a new revision): false rollbacks (target zero) and time from the canary's first
      request to promotion. Each promoted revision is the next run's stable.

Targets: weight 0 within 35 s of the canary's first request; zero false rollbacks.
A script, not a test::

    [TRTOPS_CLUSTER=trtops-canary] python bench/canary_rollback.py [--runs 5] [--json out.json]

It uses ``hack/cluster.sh up`` (the shared ``trtops`` cluster, reused if it answers). With
``TRTOPS_CLUSTER`` naming a cluster that is not up yet, it makes that cluster and deletes it at
the end, which keeps other engineers' test runs (and their ``cluster.sh up``) out of the way.

The stack is ``tests.support.stack.local_stack``, the same as the demo's. Everything it starts
(namespace, PersistentVolume, node agent, Prometheus, operator, gateway, traffic) is stopped or
deleted on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import stack  # noqa: E402
from tests.support.cluster import CLUSTER_SCRIPT, ensure_cluster, kubectl, wait_for  # noqa: E402
from tests.support.gateway import stats  # noqa: E402

NAME = "conv"
CANARY_SVC = f"{NAME}-canary"
TARGET_ROLLBACK_S = 35.0
RUN_TIMEOUT_S = 300.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Run:
    kind: str  # "bad" or "good"
    index: int
    revision: str = ""
    outcome: str = ""  # RolledBack | Promoted | timeout: ...
    apply_to_first_request_s: float | None = None
    first_request_to_weight0_s: float | None = None  # bad runs
    first_request_to_promoted_s: float | None = None  # good runs
    reason: str = ""
    # Every analysis of the canary: its verdict and canary/stable p99 ratio (the margin to the SLO).
    analyses: list[dict[str, Any]] = field(default_factory=list)


class Bench:
    def __init__(self, workdir: Path, node: str, runs: int) -> None:
        self.workdir, self.node, self.runs = workdir, node, runs
        self.namespace = f"trtops-bench-canary-{uuid.uuid4().hex[:6]}"
        self.exit = contextlib.ExitStack()
        self.url = ""
        self.manifest: dict[str, Any] = {}
        self.results: list[Run] = []

    # -- set-up -------------------------------------------------------------------------------

    def bring_up(self) -> stack.LocalStack:
        name = os.environ.get("TRTOPS_CLUSTER", "trtops")
        existed = (
            subprocess.run(
                [str(CLUSTER_SCRIPT), "status"], capture_output=True, check=False
            ).returncode
            == 0
        )
        if not existed and name != "trtops":  # a cluster of this run's own: deleted at the end
            self.exit.callback(
                subprocess.run, [str(CLUSTER_SCRIPT), "down"], check=False, timeout=120
            )
        ensure_cluster()
        local = self.exit.enter_context(
            stack.local_stack(self.workdir, namespace=self.namespace, node=self.node, say=log)
        )
        stack.apply(self.namespace, stack.http_route_manifest(NAME))
        self.manifest = stack.engine_manifest(
            NAME, node=self.node, prometheus_url=local.prometheus.url
        )
        return local

    # -- one canary ---------------------------------------------------------------------------

    def canary_count(self) -> int:
        return int(stats(self.url)["requests"].get(CANARY_SVC, 0))

    def follow(self, run: Run, previous_revision: str) -> dict[str, Any]:
        """Apply the manifest and poll until the new revision's canary ends; fill ``run``."""
        before = self.canary_count()
        applied = time.monotonic()
        stack.apply(self.namespace, self.manifest)
        first: float | None = None
        weight0: float | None = None
        deadline = applied + RUN_TIMEOUT_S
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            now = time.monotonic()
            if first is None and self.canary_count() > before:
                first = now
                run.apply_to_first_request_s = round(first - applied, 2)
            if (
                first is not None
                and weight0 is None
                and stack.route_weights(self.namespace, NAME).get(CANARY_SVC, 0) == 0
            ):
                weight0 = time.monotonic()
            obj = stack.engine(self.namespace, NAME)
            st = obj.get("status") or {}
            canary = st.get("canary") or {}
            fresh = (
                st.get("observedGeneration") == obj["metadata"]["generation"]
                and st.get("revision") not in (None, previous_revision)
                and canary.get("revision") == st.get("revision")
            )
            if fresh:
                run.revision = st["revision"]
                run.analyses = [
                    {
                        "step": h.get("step"),
                        "verdict": h.get("verdict"),
                        "latencyRatio": h.get("latencyRatio"),
                    }
                    for h in canary.get("history") or []
                ]
                phase = canary.get("phase")
                if phase == "Promoted" and (st.get("stable") or {}).get("revision") == run.revision:
                    run.outcome = "Promoted"
                    if first is not None:
                        run.first_request_to_promoted_s = round(time.monotonic() - first, 2)
                    return obj
                if phase == "RolledBack" and (run.kind == "good" or weight0 is not None):
                    run.outcome = "RolledBack"
                    run.reason = str(
                        (canary.get("rollback") or {}).get("message") or canary.get("message", "")
                    )
                    if first is not None and weight0 is not None:
                        run.first_request_to_weight0_s = round(weight0 - first, 2)
                    return obj
                if phase == "RolledBack" and first is None:
                    run.outcome = "RolledBack"
                    run.reason = (
                        "rolled back before the canary served a request through the gateway"
                    )
                    return obj
            built = stack.condition(obj, "Built")
            if built.get("status") == "False" and built.get("reason") not in (None, "Building"):
                run.outcome = f"build failed: {built.get('reason')}"
                run.reason = str(built.get("message", ""))
                return obj
            time.sleep(0.25)
        run.outcome = f"timeout after {RUN_TIMEOUT_S:.0f}s"
        return obj

    def evidence(self, obj: dict[str, Any]) -> None:
        st = obj.get("status") or {}
        log("status.canary: " + json.dumps(st.get("canary"), indent=1)[:4000])
        log("conditions: " + json.dumps(st.get("conditions"), indent=1)[:4000])
        oplog = (self.workdir / "operator.log").read_text(errors="replace").splitlines()
        log("operator log (last 30 lines):\n" + "\n".join(oplog[-30:]))

    def settle(self, stable_revision: str, canary_revision: str) -> None:
        """Stable at 100% on the route, the canary scaled to zero, then a short quiet spell."""
        wait_for(
            lambda: (
                stack.route_weights(self.namespace, NAME).get(CANARY_SVC, 0) == 0
                and stack.route_weights(self.namespace, NAME).get(NAME) == 100
            ),
            timeout=60,
            interval=0.5,
            what="the route back to 100% stable",
        )

        def scaled_down() -> bool:
            out = kubectl(
                "get",
                "deployments",
                "-n",
                self.namespace,
                "-l",
                f"trtops.dev/engine={NAME}",
                "-o",
                "jsonpath={range .items[*]}{.metadata.labels.trtops\\.dev/revision}="
                "{.spec.replicas} {end}",
            )
            reps = dict(item.split("=") for item in out.split())
            return reps.get(stable_revision) == "1" and reps.get(canary_revision, "0") == "0"

        if canary_revision != stable_revision:
            wait_for(scaled_down, timeout=60, interval=0.5, what="the canary to be scaled down")
        time.sleep(5)

    # -- the benchmark ------------------------------------------------------------------------

    def run(self) -> None:
        local = self.bring_up()
        t0 = time.monotonic()
        stack.apply(self.namespace, self.manifest)
        first = stack.wait_stable(self.namespace, NAME, timeout=300)
        stable = first["status"]["stable"]["revision"]
        log(f"stable revision {stable} (conv fp32) Ready in {time.monotonic() - t0:.0f}s")
        self.url = local.gateway(NAME)
        traffic = local.traffic(NAME, seconds=3600)
        wait_for(
            lambda: stats(self.url)["requests"].get(NAME, 0) > 50,
            timeout=60,
            what="traffic to reach stable",
        )
        good_build = copy.deepcopy(self.manifest["spec"]["build"])

        # (a) bad canaries: the heavy model; the stable stays.
        for i in range(self.runs):
            if traffic.process.poll() is not None:
                raise RuntimeError(
                    f"background traffic exited: {(self.workdir / 'bench.log').read_text()[-1000:]}"
                )
            self.manifest["spec"]["model"]["uri"] = "models/conv-heavy.onnx"
            self.manifest["spec"]["build"] = {
                **good_build,
                "accuracy": None,
                "workspaceMiB": 1024 + 16 * i,
            }
            run = Run("bad", i + 1)
            obj = self.follow(run, previous_revision=self._current_revision())
            self.results.append(run)
            log(
                f"bad {i + 1}: {run.revision} {run.outcome} first request -> weight 0 "
                f"{run.first_request_to_weight0_s}s ({run.reason[:160]})"
            )
            if run.outcome != "RolledBack":
                self.evidence(obj)
                raise RuntimeError(f"bad canary {i + 1} ended {run.outcome}")
            self.settle(stable, run.revision)

        # (b) good canaries: the same model as stable; each promotion is the next stable.
        for i in range(self.runs):
            self.manifest["spec"]["model"]["uri"] = "models/conv.onnx"
            self.manifest["spec"]["build"] = {**good_build, "workspaceMiB": 3072 + 16 * i}
            run = Run("good", i + 1)
            obj = self.follow(run, previous_revision=self._current_revision())
            self.results.append(run)
            log(
                f"good {i + 1}: {run.revision} {run.outcome} first request -> promoted "
                f"{run.first_request_to_promoted_s}s {run.reason[:160]}"
            )
            if run.outcome not in ("Promoted", "RolledBack"):
                self.evidence(obj)
                raise RuntimeError(f"good canary {i + 1} ended {run.outcome}")
            if run.outcome == "RolledBack":
                self.evidence(obj)
                self.settle(stable, run.revision)
            else:
                stack.wait_stable(self.namespace, NAME, timeout=60)
                old = stable
                stable = run.revision
                wait_for(
                    lambda old=old: old not in self._deployment_names(),  # type: ignore[misc]
                    timeout=60,
                    interval=0.5,
                    what=f"{old} to be retired",
                )
                self.settle(stable, stable)

    def _deployment_names(self) -> str:
        return kubectl("get", "deployments", "-n", self.namespace, "-o", "name")

    def _current_revision(self) -> str:
        return str((stack.engine(self.namespace, NAME).get("status") or {}).get("revision", ""))


def summarize(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {
        "n": len(values),
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: list[Run], runs: int) -> dict[str, Any]:
    print(
        f"{'run':<8} {'revision':<14} {'outcome':<12} "
        f"{'1st req->weight 0 s':>20} {'1st req->promoted s':>20} "
        f"{'apply->1st req s':>17}  analyses (verdict, p99 ratio)"
    )
    for r in results:
        print(
            f"{r.kind + ' ' + str(r.index):<8} {r.revision:<14} {r.outcome:<12} "
            f"{_fmt(r.first_request_to_weight0_s):>20} {_fmt(r.first_request_to_promoted_s):>20} "
            f"{_fmt(r.apply_to_first_request_s):>17}  "
            + ", ".join(f"{a['verdict']} {a['latencyRatio']}" for a in r.analyses)
        )
    bad = [r for r in results if r.kind == "bad"]
    good = [r for r in results if r.kind == "good"]
    rollback = [
        r.first_request_to_weight0_s for r in bad if r.first_request_to_weight0_s is not None
    ]
    promote = [
        r.first_request_to_promoted_s for r in good if r.first_request_to_promoted_s is not None
    ]
    out = {
        "runs_requested": runs,
        "bad": {
            "runs": len(bad),
            "rolled_back": sum(r.outcome == "RolledBack" for r in bad),
            "first_request_to_weight0_s": summarize(rollback),
            "within_target": sum(v <= TARGET_ROLLBACK_S for v in rollback),
            "target_s": TARGET_ROLLBACK_S,
        },
        "good": {
            "runs": len(good),
            "promoted": sum(r.outcome == "Promoted" for r in good),
            "false_rollbacks": sum(r.outcome == "RolledBack" for r in good),
            "analyses": sum(len(r.analyses) for r in good),
            "max_latency_ratio": max(
                (
                    a["latencyRatio"]
                    for r in good
                    for a in r.analyses
                    if a["latencyRatio"] is not None
                ),
                default=None,
            ),
            "first_request_to_promoted_s": summarize(promote),
        },
        "results": [asdict(r) for r in results],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "results"}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="bad canaries, then as many good ones")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path.home() / ".cache" / "trtops" / "bench-canary",
        help="node agent root, logs, Prometheus data (wiped at start)",
    )
    parser.add_argument("--node", default="local-bench", help="the node agent's Node name")
    parser.add_argument("--json", type=Path, help="also write the figures and every run here")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    bench = Bench(args.workdir, args.node, args.runs)
    stack.raise_on_sigterm()
    rc = 0
    try:
        with bench.exit:
            bench.run()
    except (KeyboardInterrupt, stack.Interrupted):
        log("interrupted; everything started here is stopped")
        rc = 130
    except Exception as exc:  # the figures so far, after the clean-up
        log(f"failed: {exc}; logs in {args.workdir}")
        rc = 1
    out = report(bench.results, args.runs)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    bad, good = out["bad"], out["good"]
    if rc == 0 and (
        bad["rolled_back"] < args.runs or good["false_rollbacks"] or good["promoted"] < args.runs
    ):
        rc = 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
