"""The local demo (``hack/demo.sh`` runs ``python -m tests.support.demo``) and the helpers it
shares with the end-to-end tests: fill a claim folder with a sample model and its data, and read
and write TrtEngine resources through the API server (the operator's public surface: spec in,
status conditions, plans and revisions out)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from trtops_worker import samples

from tests.support.cluster import REPO
from tests.support.stack import Interrupted, LocalStack, local_stack, raise_on_sigterm

GROUP, VERSION, PLURAL = "trtops.dev", "v1alpha1", "trtengines"
SAMPLES = REPO / "samples" / "local"


def load_sample(name: str = "conv-int8.yaml", node: str | None = None) -> dict[str, Any]:
    """A TrtEngine from ``samples/local/`` as a dict, its pods pinned to ``node`` if given."""
    body: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    if node is not None:
        for part in ("build", "serving"):
            body["spec"][part]["nodeSelector"] = {"trtops.dev/node-agent": node}
    return body


def fill_claim(
    folder: Path,
    model: onnx.ModelProto | None = None,
    *,
    name: str = "conv",
    samples_n: int = 32,
    heavy: bool = False,
) -> onnx.ModelProto:
    """Write ``models/<name>.onnx``, ``data/calib.npz``, ``data/val.npz``, ``data/request.npz`` (one
    request) and, as a deliberately bad calibration set, ``data/zeros.npz`` into a claim folder;
    with ``heavy``, also ``models/<name>-heavy.onnx`` (~50x the compute). Returns the model."""
    model = model or samples.conv_classifier()
    samples.save(model, folder / "models" / f"{name}.onnx")
    if heavy:
        samples.save(
            samples.conv_classifier(width=64, depth=6), folder / "models" / f"{name}-heavy.onnx"
        )
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    calib = samples.calibration_inputs(model, samples_n, seed=1)
    np.savez(data / "calib.npz", **calib)  # type: ignore[arg-type]  # numpy's stub wants one positional
    np.savez(data / "val.npz", **samples.calibration_inputs(model, samples_n, seed=2))  # type: ignore[arg-type]
    np.savez(data / "request.npz", **samples.calibration_inputs(model, 1, seed=3))  # type: ignore[arg-type]
    np.savez(data / "zeros.npz", **{k: np.zeros_like(v) for k, v in calib.items()})  # type: ignore[arg-type]
    return model


class Engines:
    """TrtEngine resources of one namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def create(self, body: dict[str, Any]) -> None:
        body = copy.deepcopy(body)
        body["metadata"].pop("namespace", None)
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, self.ns, PLURAL, name
        )
        return obj

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        """Merge ``spec`` into the resource's spec, as ``kubectl apply`` of a changed file would."""
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
        )

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in self.get(name).get("status", {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return {}

    def serving_pods(self, name: str) -> list[Any]:
        selector = f"trtops.dev/engine={name},trtops.dev/component=serve"
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def ready_serving_pods(self, name: str) -> list[Any]:
        def ready(pod: Any) -> bool:
            conds = pod.status.conditions or []
            return not pod.metadata.deletion_timestamp and any(
                c.type == "Ready" and c.status == "True" for c in conds
            )

        return [p for p in self.serving_pods(name) if ready(p)]

    def deployments(self, name: str) -> list[Any]:
        return list(
            self.apps.list_namespaced_deployment(
                self.ns, label_selector=f"trtops.dev/engine={name}"
            ).items
        )


def infer(
    url: str, model: str, inputs: dict[str, np.ndarray], *, timeout: float = 30
) -> dict[str, np.ndarray]:
    """One OIP v2 inference over HTTP/JSON; returns the outputs by name, shaped."""
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    body = {
        "id": "e2e",
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": datatypes[v.dtype],
                "data": v.ravel().tolist(),
            }
            for k, v in inputs.items()
        ],
    }
    req = urllib.request.Request(  # noqa: S310 - the loopback gateway
        f"{url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback gateway
        answer = json.load(resp)
    if answer.get("id") != "e2e":
        raise AssertionError(f"request id not echoed: {answer.get('id')!r}")
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in answer["outputs"]
    }


# --- the demo ---------------------------------------------------------------------------------

NAME = "conv"
DEMO_PRICES = {"gpuHourPrice": 2.5, "cpuHourPrice": 0.04, "currency": "USD"}
DEMO_CPU = "500m"
EXPERIMENT_REQUESTS = 600


def _say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class RevisionRow:
    revision: str
    model: str
    precision: str
    start: float = 0.0  # wall-clock window in which it served traffic (for Prometheus)
    end: float = 0.0
    outcome: str = ""
    cosine: float | None = None  # output agreement with the baseline (experiment arms)


@dataclass
class Demo:
    workdir: Path
    node: str
    namespace: str
    exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    started: float = field(default_factory=time.monotonic)
    last_line: str = ""
    rows: list[RevisionRow] = field(default_factory=list)
    surprises: list[str] = field(default_factory=list)  # canaries that ended the other way
    engines: Engines | None = None
    prom_url: str = ""
    gateway_url: str = ""

    # -- set-up ---------------------------------------------------------------------------------

    def step(self, text: str) -> None:
        _say(f"\n==> {text}")

    def bring_up(self) -> LocalStack:
        from kubernetes import config

        self.step("CRD, local node agent, Prometheus, operator")
        local = self.exit.enter_context(
            local_stack(
                self.workdir,
                namespace=self.namespace,
                node=self.node,
                claim="trt-plans",  # the claim samples/local/conv-canary.yaml names
                fill=lambda folder: fill_claim(folder, heavy=True),
                watch_timeout_seconds=30,
                say=_say,
            )
        )
        self.prom_url = local.prometheus.url
        self.engines = Engines(
            config.new_client_from_config(config_file=os.environ["KUBECONFIG"]),  # type: ignore[no-untyped-call]
            self.namespace,
        )
        return local

    # -- progress -------------------------------------------------------------------------------

    def describe(self, obj: dict[str, Any]) -> str:
        st = obj.get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or []}
        rev = st.get("revision", "?")
        parts = [f"rev {rev}"]
        for type_ in ("Built", "Ready"):
            if type_ in conds:
                parts.append(f"{type_}={conds[type_]['status']}({conds[type_].get('reason', '')})")
        canary = st.get("canary") or {}
        experiment = st.get("experiment") or {}
        if (obj.get("spec") or {}).get("experiment") and experiment.get("phase"):
            parts.append(f"experiment {experiment['phase']}: {experiment.get('message', '')}")
        elif canary.get("revision") == rev and canary.get("phase"):
            parts.append(
                f"canary {canary['phase']} step {canary.get('stepIndex', 0) + 1} "
                f"weight {canary.get('weight', 0)}%"
            )
            if canary.get("lastVerdict"):
                # The verdict, not its figures: those change with every analysis.
                parts.append(f"last analysis {canary['lastVerdict']}")
        else:
            msg = conds.get("Progressing", {}).get("message") or conds.get("Ready", {}).get(
                "message", ""
            )
            parts.append(msg)
        return "  ".join(p for p in parts if p)

    def watch(self, done: Any, *, timeout: float, what: str) -> dict[str, Any]:
        """Print the engine's state on every change until ``done(obj)``; fail after ``timeout``."""
        assert self.engines is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = self.engines.get(NAME)
            line = self.describe(obj)
            if line != self.last_line:
                _say(f"    [{time.monotonic() - self.started:6.1f}s] {line}")
                self.last_line = line
            if done(obj):
                return obj
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    # -- phases ---------------------------------------------------------------------------------

    def first_revision(self) -> dict[str, Any]:
        from tests.support.cluster import kubectl

        assert self.engines is not None
        self.step("apply samples/local/conv-canary.yaml: build -> serving -> ready")
        body = load_sample("conv-canary.yaml")
        body["spec"]["build"]["nodeSelector"] = {"trtops.dev/node-agent": self.node}
        body["spec"]["serving"]["nodeSelector"] = {"trtops.dev/node-agent": self.node}
        body["spec"]["rollout"]["analysis"]["prometheus"]["address"] = self.prom_url
        # Prices and a CPU request: every revision gets a cost per 1M inferences.
        body["spec"]["serving"]["resources"] = {"requests": {"cpu": DEMO_CPU}}
        body["spec"]["cost"] = DEMO_PRICES
        kubectl("apply", "-n", self.namespace, "-f", str(SAMPLES / "conv-route.yaml"))
        self.engines.create(body)
        obj = self.watch(_stable, timeout=300, what="the first revision to serve")
        st = obj["status"]
        plan = st["plans"][0]
        _say(
            f"    plan {plan['sha256'][:16]}... precision {plan['precision']}, "
            f"built in {plan.get('buildSeconds')} s, "
            f"top-1 agreement {plan['accuracy']['outputs']['logits']['top1Agreement']}"
        )
        self.rows.append(
            RevisionRow(st["revision"], "conv.onnx", plan["precision"], start=time.time())
        )
        return obj

    def bench(self, claim: Path, seconds: int) -> None:
        self.step(f"traffic: trtops-worker bench through the gateway for {seconds} s")
        out = subprocess.run(
            [
                "trtops-worker",
                "bench",
                "--url",
                self.gateway_url,
                "--model",
                NAME,
                "--concurrency",
                "2",
                "--duration-seconds",
                str(seconds),
                "--warmup-seconds",
                "1",
                "--input-file",
                str(claim / "data" / "request.npz"),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        _say("\n".join(f"    {line}" for line in out.stdout.strip().splitlines()))
        if out.returncode != 0:
            raise RuntimeError(f"bench failed: {out.stderr[-2000:]}")

    def canary(self, spec: dict[str, Any], model: str, precision: str, *, expect: str) -> bool:
        """Change the spec and follow the canary to its end; False if no canary ever appears."""
        assert self.engines is not None
        self.engines.patch_spec(NAME, spec)
        obj = self.watch(
            lambda o: (
                (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
                and (o.get("status") or {}).get("revision") != self.rows[-1].revision
            ),
            timeout=60,
            what="the operator to see the new spec",
        )
        revision = obj["status"]["revision"]
        try:
            self.watch(
                lambda o: ((o.get("status") or {}).get("canary") or {}).get("revision") == revision,
                timeout=180,
                what="status.canary",
            )
        except TimeoutError:
            return False
        row = RevisionRow(revision, model, precision, start=time.time())
        self.rows.append(row)
        obj = self.watch(
            lambda o: (o["status"].get("canary") or {}).get("phase") in ("Promoted", "RolledBack"),
            timeout=300,
            what=f"the canary of {revision} to end",
        )
        row.end = time.time()
        canary = obj["status"]["canary"]
        for record in canary.get("history") or []:
            _say(
                f"      analysis at step {record.get('step', 0) + 1}: {record.get('verdict')}: "
                f"{record.get('reason', '')}"
            )
        if canary["phase"] == "Promoted":
            row.outcome = "promoted"
            previous = next(r for r in reversed(self.rows[:-1]) if r.outcome in ("", "stable"))
            previous.end, previous.outcome = row.end, f"replaced by {revision}"
        else:
            rollback = canary.get("rollback") or {}
            row.outcome = f"rolled back: {rollback.get('reason', '')}"
            _say(f"    RolledBack: {rollback.get('message') or canary.get('message', '')}")
        _say(f"    canary {revision}: {row.outcome} (expected: {expect})")
        if not row.outcome.startswith(expect):
            self.surprises.append(f"canary {revision} ({precision}, {model}): {row.outcome}")
        return True

    def summary(self) -> None:
        self.step("summary (server-side latency and throughput per revision, from Prometheus)")
        now = time.time()
        from trtops_operator.cost import PodFootprint, Prices, cost_per_million, cpu_cores

        prices = Prices.model_validate(DEMO_PRICES)
        pod = PodFootprint(cpu_cores=cpu_cores(DEMO_CPU))
        header = (
            "revision", "model", "precision", "p50 ms", "p99 ms", "QPS", "cosine",
            f"{prices.currency}/1M", "outcome",
        )  # fmt: skip
        table = [header]
        for row in self.rows:
            end = row.end or now
            p50, p99, qps = self.revision_metrics(row.revision, row.start, end)
            cost = cost_per_million(pod, 1, prices, qps) if qps else None
            table.append(
                (
                    row.revision,
                    row.model,
                    row.precision,
                    _fmt(p50),
                    _fmt(p99),
                    _fmt(qps, 1),
                    _fmt(row.cosine, 5),
                    _fmt(cost, 4),
                    row.outcome or "stable",
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for i, r in enumerate(table):
            _say("    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
            if i == 0:
                _say("    " + "  ".join("-" * w for w in widths))
        _say(
            "    cosine: mean cosine of the arm's outputs with the baseline's on the same live"
            " requests (experiment arms); cost: the revision's pods at"
            f" {prices.cpu_hour_price} {prices.currency}/core-hour at its measured throughput"
        )

    def revision_metrics(self, revision: str, start: float, end: float) -> tuple[float | None, ...]:
        window = max(int(end - start), 5)
        sel = f'namespace="{self.namespace}", revision="{revision}"'
        buckets = (
            f"sum by (le) (increase(trtops_request_duration_seconds_bucket{{{sel}}}[{window}s]))"
        )
        out: list[float | None] = []
        for q in (0.5, 0.99):
            value = self.query(f"histogram_quantile({q}, {buckets})", end)
            out.append(None if value is None else value * 1000)
        count = self.query(
            f'sum(increase(trtops_requests_total{{{sel}, outcome="success"}}[{window}s]))', end
        )
        out.append(None if count is None else count / window)
        return tuple(out)

    def query(self, promql: str, at: float) -> float | None:
        qs = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{self.prom_url}/api/v1/query?{qs}", timeout=10) as resp:  # noqa: S310
            result = json.load(resp)["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

    def experiment(self, stable: dict[str, Any]) -> None:
        """The stable revision against two other precisions at fixed weights, to a
        recommendation and a report (docs/experiments.md)."""
        assert self.engines is not None
        st = stable["status"]
        precision = st["stable"]["plans"][0]["precision"]
        others = [p for p in ("fp32", "fp16", "int8") if p != precision]
        self.step(
            f"experiment phase: the stable {precision} against {' and '.join(others)} at 30 % each"
            f" until {EXPERIMENT_REQUESTS} requests per arm (output agreement on shadow requests)"
        )
        experiment = {
            "variants": [{"name": p, "precision": p, "weight": 30} for p in others],
            "minRequests": EXPERIMENT_REQUESTS,
            "durationSeconds": 240,
            "intervalSeconds": 10,
            # Low: the baseline's pods do the shadow work, which a busy CPU charges to its
            # latency (docs/experiments.md).
            "shadowPercent": 10,
            "minShadowSamples": 30,
            "recommend": {"minOutputAgreement": {"cosine": 0.99}},
        }
        # Back to the stable revision's spec (the heavy canary was rolled back), plus the
        # experiment and the calibration data an int8 variant needs.
        self.engines.patch_spec(
            NAME,
            {
                "model": {"uri": "models/conv.onnx"},
                "build": {"precision": precision, "calibration": {"uri": "data/calib.npz"}},
                "experiment": experiment,
            },
        )
        obj = self.watch(
            lambda o: (
                ((o.get("status") or {}).get("experiment") or {}).get("phase")
                in ("Completed", "Failed")
            ),
            timeout=420,
            what="the experiment to end",
        )
        exp = obj["status"]["experiment"]
        if exp["phase"] != "Completed":
            raise RuntimeError(f"experiment {exp['phase']}: {exp.get('message')}")
        started, ended = (
            dt.datetime.fromisoformat(exp[k].replace("Z", "+00:00")).timestamp()
            for k in ("startedAt", "completedAt")
        )
        for r in exp.get("results") or []:
            agree = (r.get("outputAgreement") or {}).get("cosine")
            lat = r.get("latency") or {}
            _say(
                f"      {r['name']:8} {r['precision']:5} weight {r['weight']:3}%"
                f"  p50 {_fmt(r.get('p50Ms'))} ms  p95 {_fmt(r.get('p95Ms'))} ms"
                f"  cosine {_fmt(agree, 5)}  vs baseline: {lat.get('significance', '-')}"
                f"  {exp.get('currency', '')}/1M {_fmt(r.get('costPerMillion'), 4)}"
            )
            row = RevisionRow(
                r["revision"],
                "conv.onnx",
                r["precision"],
                start=started,
                end=ended,
                outcome="experiment baseline" if r["name"] == "baseline" else "experiment arm",
                cosine=agree,
            )
            if r["name"] != "baseline":
                self.rows.append(row)
        rec = exp["recommendation"]
        _say(f"    recommended: {rec['variant']} ({rec['precision']}): {rec['reason']}")
        _say(f"    to promote it: {rec['promote']}")
        for row in self.rows:
            if row.precision == rec["precision"] and row.outcome.startswith("experiment"):
                row.outcome += " (recommended)"
        out = self.workdir / "report"
        from trtops_operator.experiment import report

        if report.main([NAME, "-n", self.namespace, "--out", str(out), "--prometheus",
                        self.prom_url]) == 0:  # fmt: skip
            _say(f"    report: {out / (NAME + '-experiment.md')} and its .png")

    # -- the whole story ------------------------------------------------------------------------

    def run(self) -> None:
        local = self.bring_up()
        self.first_revision()
        self.gateway_url = local.gateway(NAME)
        self.bench(local.claim, seconds=8)

        self.step(
            "canary phase: a good revision (same model, fp32 -> fp16), "
            "then a bad one (a ~50x heavier model)"
        )
        traffic = local.traffic(NAME, seconds=900)
        try:
            if not self.canary(
                {"build": {"precision": "fp16"}}, "conv.onnx", "fp16", expect="promoted"
            ):
                _say(
                    "    status.canary never appeared: this operator has no canary support; "
                    "skipping the canary phase"
                )
                return
            if self.rows[-1].outcome == "promoted":
                self.watch(_stable, timeout=120, what="the promoted revision to be stable")
            self.canary(
                {"model": {"uri": "models/conv-heavy.onnx"}, "build": {"precision": "fp32"}},
                "conv-heavy.onnx",
                "fp32",
                expect="rolled back",
            )
            self.experiment(self.engines.get(NAME) if self.engines else {})
        finally:
            traffic.stop()


def _stable(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    conds = {c["type"]: c for c in st.get("conditions") or []}
    built = conds.get("Built", {})
    if built.get("status") == "False" and built.get("reason") not in (None, "Building"):
        raise RuntimeError(f"build failed: {built.get('reason')}: {built.get('message')}")
    return (
        conds.get("Ready", {}).get("status") == "True"
        and (st.get("stable") or {}).get("revision") == st.get("revision")
        and st.get("observedGeneration") == obj["metadata"]["generation"]
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/demo.sh", description="The trtops local demo.")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("TRTOPS_CACHE", Path.home() / ".cache" / "trtops")) / "demo",
        help="logs, Prometheus data and the claim folders (wiped at start)",
    )
    parser.add_argument(
        "--node",
        default=os.environ.get("TRTOPS_NODE_AGENT_NAME", "local-demo"),
        help="name of the local node agent's Node (default: $TRTOPS_NODE_AGENT_NAME or local-demo)",
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    demo = Demo(args.workdir, args.node, f"trtops-demo-{uuid.uuid4().hex[:6]}")
    raise_on_sigterm()
    rc = 0
    try:
        with demo.exit:
            try:
                demo.run()
            finally:  # what happened so far, also after a failure or Ctrl-C
                if demo.rows:
                    with contextlib.suppress(Exception):
                        demo.summary()
    except (KeyboardInterrupt, Interrupted):
        _say("\ninterrupted: everything this demo started has been stopped")
        rc = 130
    except Exception as exc:  # show what went wrong after the clean-up, and where the logs are
        _say(f"\ndemo failed: {exc}\nlogs: {args.workdir}")
        rc = 1
    if rc == 0 and demo.surprises:  # a run that told the wrong story is not a success
        _say("\ndemo failed: " + "; ".join(demo.surprises) + f"\nlogs: {args.workdir}")
        rc = 1
    _say(f"\ndone in {time.monotonic() - demo.started:.0f} s; logs in {args.workdir}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
