"""Rollout judgement benchmark (issue 13): does the canary judge promote what is good and roll back
what is bad, how fast, and what would a Flagger-style rule and a fixed p99-ratio rule have done
on the same data?

Two parts:

``record``: real latencies. Two real ``trtops-worker serve`` processes (ONNX Runtime, the sample
CNN, one intra-op thread each) serve the *same* model side by side on this machine, each under
a closed-loop client, for ``--seconds``; every request's end-to-end latency (client-measured:
HTTP, JSON codec, queueing, inference) and completion time is saved to ``--recording``. Pod A
plays stable, pod B the canary: so the "identical" scenario carries the real pod-to-pod
difference of a busy CPU node, which is what made the fixed ratio rule roll back healthy
revisions.

``replay`` (the default): rollouts replayed through the operator's own pure code, the step
machine (``canary.steps.decide``) and the analysis (``canary.analysis.evaluate``), on histograms
made from the recording with the worker's bucket bounds. At analysis time ``t`` of a rollout
with canary weight ``w``, the window is ``min(30 s, time since the step began)`` (what the
operator queries); each side gets a Poisson number of requests for its share of ``--rps``,
taken as consecutive recorded requests from that pod (so slow stretches stay together). Runs
differ in where in the recording they start and in the Poisson draws. The regressions are
*synthesized* on top of the measured distributions, defined by end-to-end latency: the canary's
recorded latencies multiplied by 1.25 or 2 (what a model 1.25x / 2x slower end to end looks
like), server errors injected at +2 %, every request a 4xx (schema break), or no canary traffic.
The table reports the effect each scenario really produced (median canary/stable end-to-end
latency over the run).

Rules compared on the same windows, each through the same step machine:

- ``judge``: this operator's analysis with its defaults (``analysis.judge``: confidence 0.95,
  minLatencyEffect 1.25, client errors on) and ``failureLimit`` 2.
- ``flagger``: Flagger's built-in checks as commonly configured: request success rate (non-5xx)
  >= 99 % and p99 <= 500 ms; a window without data counts as a failed check, as Flagger halts on
  "no values found".
- ``ratio``: the previous rule: canary p99 / stable p99 <= ``--ratio-limit`` and error rate
  <= 1 %, a Passed whenever the canary served ``minRequests`` and no limit broke.

Outcomes per run: ``promoted``, ``rolled back`` (with the analysis count at decision), or
``held`` (no decision within ``--horizon`` seconds: never promoted). Detection = not promoted
for a bad scenario; false rollback = a rollback in the identical scenario.

A script, not a test::

    python bench/rollout_judgement.py record [--seconds 120]
    python bench/rollout_judgement.py [--runs 20] [--rps 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "operator", REPO / "worker"):
    sys.path.insert(0, str(p))

from trtops_operator.canary.analysis import (  # noqa: E402
    MIN_WINDOW_SECONDS,
    Breach,
    RevisionSample,
    Verdict,
    evaluate,
    window_seconds,
)
from trtops_operator.canary.steps import analysis_due, analysis_window, decide, start  # noqa: E402
from trtops_operator.models import RolloutSpec  # noqa: E402
from trtops_worker.serve.metrics import LATENCY_BUCKETS  # noqa: E402

DEFAULT_RECORDING = REPO / "bench" / "data" / "rollout_judgement_recording.npz"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MODEL = "conv"


# --- record ---------------------------------------------------------------------------------


def record(path: Path, seconds: float) -> None:
    import requests
    from trtops_worker import samples

    from tests.support.worker import start_server

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        samples.save(samples.conv_classifier(width=8), tmp / "conv.onnx")
        servers = [
            start_server(
                tmp,
                *("--model", str(tmp / "conv.onnx"), "--model-name", MODEL),
                *("--revision", rev, "--precision", "fp32", "--intra-op-threads", "1"),
            )
            for rev in ("a", "b")
        ]
        x = np.random.default_rng(0).random((1, 3, 32, 32), np.float32)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 3, 32, 32],
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        ).encode()
        out: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
        stop = time.monotonic() + seconds
        start_t = time.monotonic()

        def client(name: str, url: str) -> None:
            s = requests.Session()
            while time.monotonic() < stop:
                t = time.monotonic()
                r = s.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
                done = time.monotonic()
                if r.status_code == 200:
                    out[name].append((done - start_t, done - t))

        threads = [
            threading.Thread(target=client, args=(n, srv.infer_url(MODEL)))
            for n, srv in zip(("a", "b"), servers, strict=True)
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for srv in servers:
                srv.stop()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        f"{k}_{i}": np.array([r[j] for r in v], np.float32)
        for k, v in out.items()
        for j, i in enumerate(("t", "latency"))
    }
    np.savez_compressed(path, **arrays)
    for k, v in out.items():
        lat = np.array([r[1] for r in v]) * 1000
        print(
            f"pod {k}: {len(v)} requests, p50 {np.median(lat):.2f} ms,"
            f" p99 {np.quantile(lat, 0.99):.2f} ms"
        )
    print(f"saved {path}")


# --- replay ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    bad: bool
    latency_factor: float = 1.0
    server_error_rate: float = 0.0
    all_client_errors: bool = False
    no_traffic: bool = False


SCENARIOS = (
    Scenario("identical", bad=False),
    Scenario("latency 1.25x", bad=True, latency_factor=1.25),
    Scenario("latency 2x", bad=True, latency_factor=2.0),
    Scenario("+2% server errors", bad=True, server_error_rate=0.02),
    Scenario("schema break (all 4xx)", bad=True, all_client_errors=True),
    Scenario("no traffic", bad=True, no_traffic=True),
)


def rollout_spec(args: argparse.Namespace) -> RolloutSpec:
    """The demo's rollout by default: 20 % then 50 %, 10 s pauses, analysis every 10 s,
    failureLimit 2."""
    return RolloutSpec.model_validate(
        {
            "trafficRouter": {"gatewayAPI": {"httpRoute": MODEL}},
            "steps": [
                {"setWeight": 20, "pauseSeconds": args.pause},
                {"setWeight": 50, "pauseSeconds": args.pause},
            ],
            "analysis": {
                "prometheus": {"address": "http://prometheus:9090"},
                "intervalSeconds": args.interval,
                "failureLimit": 2,
                "minRequests": args.min_requests,
                "slo": {"maxErrorRate": 0.01},
                "judge": {"minLatencyEffect": args.min_effect},
            },
        }
    )


@dataclass
class Pod:
    t: np.ndarray
    latency: np.ndarray

    def take(self, at: float, seconds: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` recorded latencies drawn from the requests completed in recording time
        ``[at, at + seconds)`` (wrapping around the recording's end), so a window keeps the
        time structure of its span (a slow stretch stays in the windows it falls in)."""
        if n <= 0:
            return np.array([], np.float64)
        span = float(self.t[-1])
        lo = at % span
        i = int(np.searchsorted(self.t, lo))
        j = int(np.searchsorted(self.t, lo + seconds))
        pool = np.arange(i, j) % len(self.latency) if j > i else np.array([i % len(self.t)])
        if lo + seconds > span:  # wrapped
            k = int(np.searchsorted(self.t, lo + seconds - span))
            pool = np.concatenate([np.arange(i, len(self.t)), np.arange(0, k)])
        idx = np.sort(rng.choice(pool, size=n, replace=n > len(pool)))
        return self.latency[idx].astype(np.float64)


def histogram(lat: np.ndarray) -> dict[str, float]:
    b = {str(le): float((lat <= le).sum()) for le in LATENCY_BUCKETS}
    b["+Inf"] = float(len(lat))
    return b


@dataclass
class Window:
    canary: RevisionSample
    stable: RevisionSample
    canary_lat: np.ndarray
    stable_lat: np.ndarray


def make_window(
    sc: Scenario,
    stable: Pod,
    canary: Pod,
    at: float,
    seconds: float,
    weight: int,
    rps: float,
    rng: np.random.Generator,
) -> Window:
    n_c = 0 if sc.no_traffic else int(rng.poisson(rps * weight / 100 * seconds))
    n_s = int(rng.poisson(rps * (100 - weight) / 100 * seconds))
    lat_s = stable.take(at - seconds, seconds, n_s, rng)
    lat_c = canary.take(at - seconds, seconds, n_c, rng) * sc.latency_factor
    outcomes_c = {"success": float(n_c), "client_error": 0.0, "server_error": 0.0}
    if sc.all_client_errors:
        outcomes_c = {"success": 0.0, "client_error": float(n_c), "server_error": 0.0}
        lat_c = lat_c[:0]
    elif sc.server_error_rate:
        errors = rng.random(n_c) < sc.server_error_rate
        lat_c = lat_c[~errors]
        outcomes_c = {
            "success": float(len(lat_c)),
            "client_error": 0.0,
            "server_error": float(errors.sum()),
        }
    outcomes_s = {"success": float(n_s), "client_error": 0.0, "server_error": 0.0}
    return Window(
        RevisionSample.from_vectors(outcomes_c, histogram(lat_c), seconds),
        RevisionSample.from_vectors(outcomes_s, histogram(lat_s), seconds),
        lat_c,
        lat_s,
    )


Rule = Callable[[Window, RolloutSpec], Verdict]


def judge_rule(w: Window, spec: RolloutSpec) -> Verdict:
    a = spec.analysis
    assert a is not None
    return evaluate(w.canary, w.stable, slo=a.slo, judge=a.judge, min_requests=a.min_requests)


def flagger_rule(w: Window, spec: RolloutSpec) -> Verdict:
    """Flagger's builtin request-success-rate >= 99 % and request-duration p99 <= 500 ms."""
    m = w.canary.metrics()
    if m.requests < 1 or m.p99_ms is None:
        return Verdict("Failed", "no values found", m, breaches=(Breach("noData", 0, 1),))
    breaches = []
    success = 1.0 - (m.error_rate or 0.0)
    if success < 0.99:
        breaches.append(Breach("requestSuccessRate", success, 0.99))
    if m.p99_ms > 500:
        breaches.append(Breach("requestDuration", m.p99_ms, 500))
    kind = "Failed" if breaches else "Passed"
    return Verdict(kind, "flagger", m, breaches=tuple(breaches))


def ratio_rule(limit: float) -> Rule:
    def rule(w: Window, spec: RolloutSpec) -> Verdict:
        a = spec.analysis
        assert a is not None
        m, s = w.canary.metrics(), w.stable.metrics()
        if m.requests < a.min_requests:
            return Verdict("InsufficientData", "few", m, s)
        breaches = []
        if (m.error_rate or 0.0) > 0.01:
            breaches.append(Breach("maxErrorRate", m.error_rate, 0.01))
        if s.requests >= a.min_requests and s.p99_ms and m.p99_ms is not None:
            ratio = m.p99_ms / s.p99_ms
            if ratio > limit:
                breaches.append(Breach("maxLatencyRatioToStable", ratio, limit))
        return Verdict("Failed" if breaches else "Passed", "ratio", m, s, breaches=tuple(breaches))

    return rule


@dataclass
class Outcome:
    result: str  # promoted | rolled back | held
    analyses: int  # analyses until the decision (or in the horizon)
    seconds: float
    effect: float | None  # median canary/stable end-to-end latency over the run


def run_once(
    sc: Scenario,
    rule: Rule,
    spec: RolloutSpec,
    stable: Pod,
    canary: Pod,
    offset: float,
    rps: float,
    seed: int,
    horizon: float,
) -> Outcome:
    rng = np.random.default_rng(seed)
    state = start(spec, revision="b", key="b", stable_revision="a", generation=1, now=T0)
    analyses = 0
    lat_c: list[np.ndarray] = []
    lat_s: list[np.ndarray] = []
    t = 0.0
    while t <= horizon:
        now = T0 + dt.timedelta(seconds=t)
        verdict = None
        if analysis_due(spec, state, now):
            assert spec.analysis is not None
            seconds = float(
                window_seconds(
                    spec.analysis.interval_seconds,
                    MIN_WINDOW_SECONDS,
                    analysis_window(state, now),
                )
            )
            w = make_window(sc, stable, canary, offset + t, seconds, state.weight, rps, rng)
            verdict = rule(w, spec)
            analyses += 1
            lat_c.append(w.canary_lat)
            lat_s.append(w.stable_lat)
        d = decide(spec, state, now=now, stable_replicas=1, canary_available=1, verdict=verdict)
        state = d.state
        if state.phase in ("Promoted", "RolledBack"):
            break
        t += 1.0
    c, s = np.concatenate(lat_c or [np.array([])]), np.concatenate(lat_s or [np.array([])])
    effect = float(np.median(c) / np.median(s)) if len(c) and len(s) else None
    result = {"Promoted": "promoted", "RolledBack": "rolled back"}.get(state.phase, "held")
    return Outcome(result, analyses, t, effect)


@dataclass
class Row:
    scenario: str
    rule: str
    runs: int
    promoted: int = 0
    rolled_back: int = 0
    held: int = 0
    analyses_to_decision: list[int] = field(default_factory=list)
    effects: list[float] = field(default_factory=list)


def replay(args: argparse.Namespace) -> list[Row]:
    data = np.load(args.recording)
    stable, canary = Pod(data["a_t"], data["a_latency"]), Pod(data["b_t"], data["b_latency"])
    spec = rollout_spec(args)
    rules: dict[str, Rule] = {
        "judge": judge_rule,
        "flagger": flagger_rule,
        f"ratio {args.ratio_limit:g}x": ratio_rule(args.ratio_limit),
        "ratio 3x": ratio_rule(3.0),
    }
    span = float(min(stable.t[-1], canary.t[-1]))
    rows: list[Row] = []
    for sc in SCENARIOS:
        runs = args.runs
        for name, rule in rules.items():
            row = Row(sc.name, name, runs)
            for r in range(runs):
                offset = span * r / runs
                o = run_once(sc, rule, spec, stable, canary, offset, args.rps, r, args.horizon)
                if o.result == "promoted":
                    row.promoted += 1
                elif o.result == "rolled back":
                    row.rolled_back += 1
                else:
                    row.held += 1
                if o.result != "held":
                    row.analyses_to_decision.append(o.analyses)
                if o.effect is not None:
                    row.effects.append(o.effect)
            rows.append(row)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | effect (canary/stable median e2e, judge runs) | rule | promoted"
        " | rolled back | held | analyses to decision (median, max) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    effects = {r.scenario: r.effects for r in rows if r.rule == "judge"}
    for r in rows:
        mine = effects.get(r.scenario) or []
        eff = f"{statistics.median(mine):.2f}x" if mine else "n/a"
        a = r.analyses_to_decision
        when = f"{statistics.median(a):g}, {max(a)}" if a else "-"
        lines.append(
            f"| {r.scenario} | {eff} | {r.rule} | {r.promoted}/{r.runs} | {r.rolled_back}/{r.runs}"
            f" | {r.held}/{r.runs} | {when} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", nargs="?", choices=("replay", "record"), default="replay")
    ap.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    ap.add_argument("--seconds", type=float, default=120.0, help="record: how long")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rps", type=float, default=40.0, help="total requests/s over both sides")
    ap.add_argument("--min-requests", type=int, default=20)
    ap.add_argument("--ratio-limit", type=float, default=1.25)
    ap.add_argument("--min-effect", type=float, default=1.25, help="judge.minLatencyEffect")
    ap.add_argument("--interval", type=int, default=10, help="analysis.intervalSeconds")
    ap.add_argument("--pause", type=int, default=10, help="pauseSeconds of each step")
    ap.add_argument("--horizon", type=float, default=300.0, help="seconds before 'held'")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.mode == "record":
        record(args.recording, args.seconds)
        return
    rows = replay(args)
    print(
        f"rollout judgement, {args.runs} runs per scenario, {args.rps:g} req/s total,"
        f" minRequests {args.min_requests}, minLatencyEffect {args.min_effect:g}, steps 20% ->"
        f" 50% ({args.pause} s each), analysis every {args.interval} s over"
        f" min(max(interval, 30 s), time at weight), failureLimit 2, held = no decision in"
        f" {args.horizon:g} s; recording {args.recording.name}"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))


if __name__ == "__main__":
    main()
