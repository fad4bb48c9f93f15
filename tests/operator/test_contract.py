"""The operator/worker contract (``trtops_worker.contract``) matches what each side really does:
a drift here is a worker whose failures the operator misreads, or an analysis querying metrics
nobody serves."""

from __future__ import annotations

from trtops_operator.canary import promql
from trtops_operator.results import BuildFailure, BuildSuccess, parse_result
from trtops_worker import contract
from trtops_worker.builder import errors
from trtops_worker.serve import metrics as serve_metrics


def test_exit_codes_are_the_build_errors_codes() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    codes = {
        c.category: c.exit_code
        for c in classes
        if issubclass(c, errors.BuildError) and c is not errors.BuildError
    }
    assert codes == contract.EXIT_CODES


def test_analysis_queries_the_metrics_the_server_exposes() -> None:
    assert serve_metrics.LABELS == contract.METRIC_LABELS
    assert promql.LATENCY == contract.METRIC_REQUEST_DURATION + "_bucket"
    assert promql.REQUESTS == contract.METRIC_REQUESTS


def test_a_success_result_becomes_a_plan_and_a_bad_one_a_named_failure() -> None:
    ok = parse_result('{"ok": true, "key": "k", "path": "/plans/k", "buildSeconds": 3}')
    assert isinstance(ok, BuildSuccess)
    assert ok.plan_fields() == {"path": "/plans/k", "artifactKey": "k", "buildSeconds": 3}
    bad = parse_result('{"ok": true, "key": "k", "path": "relative"}')
    assert isinstance(bad, BuildFailure)
    assert (bad.reason, "path" in bad.message) == ("MalformedResult", True)
