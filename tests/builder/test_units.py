"""Pure parts, table-tested: cache key, profiles, accuracy metrics, result compaction, store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from trtops_worker.builder.accuracy import Thresholds, evaluate, output_metrics
from trtops_worker.builder.errors import EXIT_CODES, ConfigError
from trtops_worker.builder.profiles import parse_profile
from trtops_worker.builder.result import compact, failure
from trtops_worker.builder.store import Store
from trtops_worker.cachekey import (
    CalibrationIngredients,
    Device,
    KeyIngredients,
    ProfileIngredients,
    cache_key,
)

BASE = KeyIngredients(
    model_sha256="a" * 64,
    precision="fp16",
    backend="tensorrt",
    backend_version="11.4.0",
    device=Device("9.0", "NVIDIA-H100-80GB-HBM3"),
)


def test_cache_key_is_stable() -> None:
    # The operator computes this key too: a change here re-keys every stored plan.
    assert cache_key(BASE) == cache_key(dataclasses.replace(BASE))
    assert cache_key(BASE) == "ea7d47eade15d1689466e97845e8b7264da2d3f8177a07ef72d4e5a84a5131fb"


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "b" * 64},
        {"precision": "int8", "calibration": CalibrationIngredients("c" * 64, "entropy", 512)},
        {"backend_version": "11.5.0"},
        {"device": Device("8.9", "NVIDIA-L4")},
        {"device": Device("9.0", "NVIDIA-H200")},
        {"optimization_level": 5},
        {"workspace_mib": 4096},
        {"profiles": (ProfileIngredients("input", (1, 3), (4, 3), (8, 3)),)},
    ],
)
def test_every_ingredient_moves_the_key(change: dict[str, object]) -> None:
    assert cache_key(dataclasses.replace(BASE, **change)) != cache_key(BASE)  # type: ignore[arg-type]


def test_calibration_details_move_the_key() -> None:
    int8 = dataclasses.replace(
        BASE, precision="int8", calibration=CalibrationIngredients("c" * 64, "entropy", 512)
    )
    assert (
        len(
            {
                cache_key(int8),
                cache_key(
                    dataclasses.replace(
                        int8, calibration=CalibrationIngredients("c" * 64, "max", 512)
                    )
                ),
                cache_key(
                    dataclasses.replace(
                        int8, calibration=CalibrationIngredients("c" * 64, "entropy", 64)
                    )
                ),
                cache_key(
                    dataclasses.replace(
                        int8, calibration=CalibrationIngredients("d" * 64, "entropy", 512)
                    )
                ),
            }
        )
        == 4
    )


def test_profile_order_does_not_move_the_key() -> None:
    a, b = ProfileIngredients("a", (1,), (2,), (3,)), ProfileIngredients("b", (1,), (2,), (3,))
    assert cache_key(dataclasses.replace(BASE, profiles=(a, b))) == cache_key(
        dataclasses.replace(BASE, profiles=(b, a))
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "xyz"},
        {"precision": "int4"},
        {"backend": "openvino"},
        {"optimization_level": 6},
    ],
)
def test_invalid_ingredients_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        dataclasses.replace(BASE, **change)  # type: ignore[arg-type]


def test_cachekey_module_stays_pure() -> None:
    import ast

    import trtops_worker.cachekey as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    imported |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    assert imported <= {"__future__", "hashlib", "json", "re", "dataclasses", "typing"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "input:1x3x32x32:8x3x32x32:32x3x32x32",
            ("input", (1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32)),
        ),
        (
            "input:0:1x16:4x16:8x16",
            ("input:0", (1, 16), (4, 16), (8, 16)),
        ),  # TF-style names keep their colon
        ("ids:2X16:2X16:2X16", ("ids", (2, 16), (2, 16), (2, 16))),
    ],
)
def test_parse_profile(text: str, expected: tuple[object, ...]) -> None:
    p = parse_profile(text)
    assert (p.input, p.min, p.opt, p.max) == expected


@pytest.mark.parametrize(
    "text",
    ["input:1x3:2x3", "input:0x3:1x3:2x3", "input:ax3:1x3:2x3", "input:1x3:2x3x4:2x3", ":1:1:1"],
)
def test_parse_profile_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile(text)
    assert info.value.reason == "InvalidProfile"


def test_metrics_identical_outputs() -> None:
    a = np.random.default_rng(0).normal(size=(16, 10))
    m = output_metrics(a, a.copy())
    assert (m.top1_agreement, m.mean_abs_error, m.max_abs_error) == (1.0, 0.0, 0.0)
    assert m.cosine_similarity == pytest.approx(1.0)


def test_metrics_detect_disagreement() -> None:
    ref = np.eye(4, dtype=np.float32)  # sample i predicts class i
    cand = ref[:, ::-1].copy()  # sample i predicts class 3-i: no argmax agrees
    m = output_metrics(ref, cand)
    assert m.top1_agreement == 0.0
    assert m.cosine_similarity == pytest.approx(0.0)
    assert m.max_abs_error == 1.0


def test_metrics_nan_output_fails_everything() -> None:
    ref = np.ones((2, 3), np.float32)
    cand = np.array([[1, np.nan, 1], [1, 1, 1]], np.float32)
    problems = evaluate({"y": output_metrics(ref, cand)}, Thresholds(0.9, 0.1, 0.9, 0.1))
    assert len(problems) == 4


def test_metrics_without_classes_skip_top1() -> None:
    m = output_metrics(np.zeros((4, 1)), np.zeros((4, 1)))
    assert m.top1_agreement is None
    assert m.cosine_similarity == 1.0


@pytest.mark.parametrize(
    ("thresholds", "violations"),
    [
        (Thresholds(0.5, 0.2, 0.5, use_defaults=False), 0),
        (Thresholds(0.9, None, None, use_defaults=False), 1),
        (Thresholds(None, 0.01, 0.99, use_defaults=False), 2),
        (Thresholds(), 2),  # class-score defaults: top-1 0.75 < 0.95, cosine 0.89 < 0.99
    ],
)
def test_evaluate_thresholds(thresholds: Thresholds, violations: int) -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    cand = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.4]])  # 3/4 agree
    metrics = {"y": output_metrics(ref, cand)}
    assert len(evaluate(metrics, thresholds, {"y": "class-scores"})) == violations


def test_compact_result_fits_and_is_deterministic() -> None:
    result = {
        "ok": True,
        "key": "k" * 64,
        "path": "/plans/" + "k" * 64,
        "artifact": "engine.plan",
        "sha256": "s" * 64,
        "precision": "int8",
        "backend": "tensorrt",
        "cached": False,
        "versions": {f"lib{i}": "1.0" for i in range(50)},
        "accuracy": {"outputs": {f"out{i}": {"top1Agreement": 0.99} for i in range(80)}},
        "benchmark": {"batches": [{"batchSize": i, "p50Ms": 1.0} for i in range(1, 60)]},
    }
    text = compact(result)
    assert len(text.encode()) <= 4096
    assert text == compact(result)
    data = json.loads(text)
    assert data["truncated"] is True
    assert data["key"] == "k" * 64
    assert data["sha256"] == "s" * 64
    small = {"ok": True, "key": "k"}
    assert json.loads(compact(small)) == small  # nothing trimmed when it fits


def test_compact_failure_trims_the_message() -> None:
    text = compact(failure("build", "BuildFailed", "é" * 10_000))
    data = json.loads(text)
    assert len(text.encode()) <= 4096
    assert data["reason"] == "BuildFailed"
    assert data["message"].endswith("...")


def test_exit_codes_are_distinct_per_category() -> None:
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert 0 not in EXIT_CODES.values()


def test_store_keeps_a_live_builds_temp_folder_and_cleans_a_dead_ones(tmp_path: Path) -> None:
    store = Store(tmp_path)
    live = store.begin("a" * 64)
    dead = store.begin("b" * 64)
    dead.release()  # the process holding it is gone: its lock can be taken
    removed = store.clean_stale()
    assert removed == [dead.path]
    assert live.path.is_dir()
    (live.path / "metadata.json").write_text(
        json.dumps({"key": "a" * 64, "artifact": "x", "artifact_sha256": "0"})
    )
    (live.path / "x").write_text("payload")
    final = store.publish(live, "a" * 64)
    assert store.lookup("a" * 64) is None  # wrong sha256 recorded: not a valid entry...
    assert not final.exists()  # ...and moved out of the way for a rebuild
