"""The experiment report a person can hand on: Markdown plus a PNG chart, from the engine's
``status.experiment`` and, for the chart's time series, Prometheus.

    python -m trtops_operator.experiment.report ENGINE -n NAMESPACE --out DIR \\
        [--prometheus http://prometheus:9090] [--kubeconfig FILE]

writes ``DIR/<engine>-experiment.md`` and ``DIR/<engine>-experiment.png`` and prints their
paths. The chart needs ``matplotlib`` (the ``report`` extra: ``pip install trtops[report]``).
Without ``--prometheus`` the chart shows the per-arm percentiles only.

:func:`render_markdown` and :func:`chart_figure` are pure (status JSON in, text or a Figure
out); :func:`main` reads the resource (the Kubernetes API) and Prometheus.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["chart_figure", "latency_series", "main", "render_markdown"]

NOT_REPORTED = "not reported"


def _f(value: Any, digits: int = 2, none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float) and abs(value) < 10 ** (-digits) and value != 0:
        return f"{value:.2g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _seconds(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    t = [dt.datetime.fromisoformat(x.replace("Z", "+00:00")) for x in (a, b)]
    return int((t[1] - t[0]).total_seconds())


def render_markdown(engine: str, namespace: str, exp: Mapping[str, Any]) -> str:
    """The report as Markdown, from ``status.experiment`` (the operator's JSON)."""
    results: list[Mapping[str, Any]] = list(exp.get("results") or [])
    rule = dict(exp.get("rule") or {})
    base = dict(exp.get("baseline") or {})
    currency = exp.get("currency")
    confidence = rule.get("confidence", 0.95)
    backend = exp.get("backend", "?")
    end = exp.get("completedAt") or exp.get("lastMeasuredAt")
    ran = _seconds(exp.get("startedAt"), end)
    lines = [
        f"# Experiment: {engine} (namespace {namespace})",
        "",
        f"Phase **{exp.get('phase', '?')}**. Baseline: {base.get('precision')} (revision"
        f" `{base.get('revision')}`), served by {backend}. "
        + (
            f"Ran {exp['startedAt']} to {end or 'now'}" + (f" ({ran} s)" if ran is not None else "")
            if exp.get("startedAt")
            else "No variant has served yet"
        )
        + ". Figures: the workers' request metrics in Prometheus over the whole run"
        " (shadow requests excluded), output agreement on shadow requests (the baseline's pods"
        " send a share of the requests they answer to the variants and compare the answers).",
        "",
        "## Recommendation",
        "",
    ]
    rec = exp.get("recommendation")
    if rec:
        lines += [
            f"**{rec.get('variant')} ({rec.get('precision')})**: {rec.get('reason')}",
            "",
            f"To promote it: {rec.get('promote')}.",
        ]
    else:
        lines.append(f"None yet ({exp.get('message', 'the experiment has not ended')}).")
        # Why a variant did not get to serve (a failed build): what status.variants[] says.
        lines += [
            f"- {v.get('name')} ({v.get('precision')}): {v['message']}"
            for v in exp.get("variants") or []
            if v.get("message")
        ]
    want = dict(rule.get("minOutputAgreement") or {})
    bounds = [f"objective **{rule.get('objective', 'fastest')}**"]
    if rule.get("maxP95LatencyMs") is not None:
        bounds.append(f"p95 <= {rule['maxP95LatencyMs']} ms")
    bounds += [f"{k} agreement >= {v}" for k, v in want.items()]
    if want:
        bounds.append(f"on at least {rule.get('minShadowSamples', '?')} shadow rows")
    if rule.get("errorRateNotWorse", True):
        bounds.append("error rate not significantly above the baseline's")
    lines += ["", f"The rule: {', '.join(bounds)}; confidence {confidence}.", ""]

    cost_head = f"cost / 1M ({currency})" if currency else "cost / 1M"
    lines += [
        "## Per arm",
        "",
        "| arm | precision | weight % | requests | QPS | p50 ms | p95 ms | p99 ms | error rate"
        f" | cosine | top-1 | shadow rows | GPU memory MiB | GPU util % | {cost_head}"
        f" | {cost_head}, busy pod |",
        "|" + "---|" * 16,
    ]
    for r in results:
        agree = r.get("outputAgreement") or {}
        baseline_row = r.get("name") == "baseline"
        cost_none = "no price set" if not currency else "-"
        cells = [
            r.get("name"),
            r.get("precision"),
            r.get("weight"),
            _f(r.get("requests"), 0),
            _f(r.get("qps"), 2),
            _f(r.get("p50Ms")),
            _f(r.get("p95Ms")),
            _f(r.get("p99Ms")),
            _f(r.get("errorRate"), 4),
            "(reference)" if baseline_row else _f(_float(agree.get("cosine")), 4),
            "(reference)" if baseline_row else _f(_float(agree.get("top1")), 4),
            "" if baseline_row else _f(agree.get("rows"), 0),
            _f(r.get("gpuMemoryMiB"), 0, NOT_REPORTED),
            _f(r.get("gpuUtilizationPercent"), 1, NOT_REPORTED),
            _f(r.get("costPerMillion"), 4, cost_none),
            _f(r.get("busyCostPerMillion"), 4, cost_none),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        f"## Each variant against the baseline (confidence {confidence})",
        "",
        "| variant | median latency ratio [lower, upper] | latency | error-rate change (p) |"
        " meets the rule | why |",
        "|---|---|---|---|---|---|",
    ]
    for r in results[1:]:
        lat = r.get("latency") or {}
        err = r.get("errors") or {}
        interval = (
            f"{_f(lat.get('ratio'), 3)} [{_f(lat.get('lower'), 3)}, {_f(lat.get('upper'), 3)}]"
        )
        change = f"{_f(err.get('increase'), 4)} (p={_f(err.get('pValue'), 3)})"
        if err.get("worse"):
            change += ", significantly worse"
        stopped = f" (stopped: {r['stopped']})" if r.get("stopped") else ""
        lines.append(
            f"| {r.get('name')}{stopped} | {interval} | {lat.get('significance', '-')}"
            f" | {change} | {'yes' if r.get('eligible') else 'no'}"
            f" | {'; '.join(r.get('notes') or [])} |"
        )
    lines += [
        "",
        "## How it was judged",
        "",
        "- Latency: a bootstrap interval on variant median / baseline median, resampled from the"
        " two latency histograms (the rollout judge, docs/canary.md); *faster* when the upper"
        " bound is below 1, *slower* when the lower bound is above 1.",
        "- Errors: Fisher's exact test (one-sided) on server errors against the baseline.",
        "- Output agreement: mean cosine similarity and top-1 agreement of each variant's outputs"
        " with the baseline's on the same shadow requests; the worst output counts.",
        "- GPU memory and utilisation: DCGM exporter series (`DCGM_FI_DEV_FB_USED`,"
        f" `DCGM_FI_DEV_GPU_UTIL`) of the arm's pods; {NOT_REPORTED} where no exporter runs"
        " (CPU nodes).",
        "- Cost per 1M inferences: the arm's pods at the prices set (spec.cost or the chart's),"
        " at the successful requests per second it served; at fixed weights that follows the"
        " weight. *Busy pod*: a pod's hourly price x its median latency, the cost of a pod kept"
        " busy one request at a time, comparable across arms.",
        "- The baseline's pods do the shadow work (encoding, sending and comparing their share of"
        " requests): on a busy CPU that work adds to the baseline's latency, which favours the"
        " variants; keep shadowPercent low.",
        "",
    ]
    return "\n".join(lines)


Series = Mapping[str, Sequence[tuple[float, float]]]  # arm -> (Unix time, p95 ms)


def chart_figure(engine: str, exp: Mapping[str, Any], series: Series | None = None) -> Any:
    """Left: p50/p95/p99 per arm, output agreement printed on the variants' bars. Right: each
    arm's p95 latency over the run, from Prometheus (or a note when it was not asked)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a Job or a CI run
    import matplotlib.pyplot as plt

    results: list[Mapping[str, Any]] = list(exp.get("results") or [])
    fig, (bars, over_time) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    names = [f"{r.get('name')}\n({r.get('precision')})" for r in results]
    width = 0.25
    top = 0.0
    for i, (key, label) in enumerate((("p50Ms", "p50"), ("p95Ms", "p95"), ("p99Ms", "p99"))):
        values = [float(r.get(key) or 0.0) for r in results]
        top = max([top, *values])
        bars.bar([x + (i - 1) * width for x in range(len(results))], values, width, label=label)
    for x, r in enumerate(results):
        cosine = (r.get("outputAgreement") or {}).get("cosine")
        text = "baseline" if x == 0 else f"cosine {cosine:.4f}" if cosine is not None else ""
        bars.text(x, top * 1.04, text, ha="center", fontsize=8)
    bars.set_ylim(0, (top or 1.0) * 1.15)
    bars.set_xticks(range(len(results)), names)
    bars.set_ylabel("latency, ms")
    bars.set_title(f"{engine}: latency per arm over the run", fontsize=10)
    bars.legend(fontsize=8, loc="lower right")
    bars.grid(True, axis="y", alpha=0.3)
    if series:
        start = min((t for pts in series.values() for t, _ in pts), default=0.0)
        for name, points in series.items():
            if points:
                over_time.plot([t - start for t, _ in points], [v for _, v in points], label=name)
        over_time.set_xlabel("seconds since the first full window")
        over_time.set_ylabel("p95 latency, ms")
        over_time.legend(fontsize=8)
        over_time.grid(True, alpha=0.3)
    else:
        over_time.text(0.5, 0.5, "no Prometheus given", ha="center", transform=over_time.transAxes)
        over_time.set_axis_off()
    over_time.set_title("p95 over time (Prometheus)", fontsize=10)
    rec = exp.get("recommendation") or {}
    if rec:
        fig.suptitle(f"recommended: {rec.get('variant')} ({rec.get('precision')})", fontsize=11)
    fig.tight_layout()
    return fig


async def latency_series(
    address: str, engine: str, namespace: str, model: str, exp: Mapping[str, Any], points: int = 30
) -> dict[str, list[tuple[float, float]]]:
    """Each arm's p95 latency (ms, over 30 s windows, or a quarter of a shorter run) at
    ``points`` times across the run, as (Unix time, ms) per arm name."""
    from trtops_operator.canary.prometheus import PrometheusClient
    from trtops_operator.canary.promql import promql_string

    start = exp.get("startedAt")
    end = exp.get("completedAt") or exp.get("lastMeasuredAt")
    if not start:
        return {}
    t0 = dt.datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
    t1 = (
        dt.datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp()
        if end
        else dt.datetime.now(dt.UTC).timestamp()
    )
    arms = {str(r.get("revision")): str(r.get("name")) for r in exp.get("results") or []}
    if not arms:
        return {}
    revisions = "|".join(sorted(arms))
    sel = (
        f"model={promql_string(model)},namespace={promql_string(namespace)},"
        f"revision=~{promql_string(revisions)}"
    )
    # 30 s windows, shorter for a short run (at least 5 s: two scrapes), from the first full one
    w = int(min(max((t1 - t0) / 4, 5), 30))
    promql = (
        "histogram_quantile(0.95, sum by (le, revision)"
        f" (rate(trtops_request_duration_seconds_bucket{{{sel}}}[{w}s])))"
    )
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in arms.values()}
    async with PrometheusClient(address, timeout_seconds=10) as client:
        for i in range(points):
            at = t0 + w + max(t1 - t0 - w, 0) * i / max(points - 1, 1)
            for rev, value in (await client.query_by(promql, "revision", at=at)).items():
                if rev in arms:
                    out[arms[rev]].append((at, value * 1000))
    return out


class ReportError(Exception):
    """What the report command could not do, said to its user (exit status 1, no traceback)."""


def _read_engine(engine: str, namespace: str, kubeconfig: str | None) -> dict[str, Any]:
    """The TrtEngine as the user's kubeconfig (else the in-cluster account) reads it."""
    import urllib3
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            raise ReportError(
                "no Kubernetes credentials: pass --kubeconfig or set KUBECONFIG"
                f" ({kubeconfig or 'the default kubeconfig'} did not load)"
            ) from None
    try:
        body: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(  # type: ignore[assignment]
            "trtops.dev", "v1alpha1", namespace, "trtengines", engine
        )
        return body
    except client.ApiException as exc:
        if exc.status == 404:
            raise ReportError(
                f"no TrtEngine {engine!r} in namespace {namespace!r}"
                f" (kubectl get trt -n {namespace} lists them)"
            ) from None
        raise ReportError(f"the API server answered {exc.status} {exc.reason}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise ReportError(f"cannot reach the API server: {exc}") from None


def _series(
    address: str, engine: str, namespace: str, model: str, exp: Mapping[str, Any]
) -> Series:
    from trtops_operator.canary.prometheus import PrometheusError

    try:
        return asyncio.run(latency_series(address, engine, namespace, model, exp))
    except (PrometheusError, ValueError) as exc:
        raise ReportError(
            f"Prometheus at {address}: {exc}; leave out --prometheus for a report without"
            " the p95-over-time chart"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trtops_operator.experiment.report",
        description="Markdown + PNG report of a TrtEngine's experiment (status.experiment).",
    )
    parser.add_argument("engine")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--out", type=Path, required=True, help="folder for the two files")
    parser.add_argument("--prometheus", help="Prometheus URL for the latency-over-time chart")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, then in-cluster")
    args = parser.parse_args(argv)

    try:
        try:
            import matplotlib  # noqa: F401 - the PNG's; an extra
        except ImportError:
            raise ReportError("matplotlib is missing: pip install 'trtops[report]'") from None
        body = _read_engine(args.engine, args.namespace, args.kubeconfig)
        exp = (body.get("status") or {}).get("experiment")
        if not exp:
            raise ReportError(f"{args.namespace}/{args.engine} has no status.experiment")
        model = (body.get("spec") or {}).get("serving", {}).get("modelName") or args.engine
        series = None
        if args.prometheus:
            series = _series(args.prometheus, args.engine, args.namespace, model, exp)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / f"{args.engine}-experiment.md"
    png = args.out / f"{args.engine}-experiment.png"
    md.write_text(render_markdown(args.engine, args.namespace, exp))
    import matplotlib.pyplot as plt

    fig = chart_figure(args.engine, exp, series)
    fig.savefig(png)
    plt.close(fig)
    print(md)
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
