"""hack/device-bench.sh: the serving benchmark's one-call driver for the lent device machine.
Here only what it does before measuring: the plan it prints (one run per size and core count,
each with its time estimate, the whole against the budget) and the refusal to start without the
bundle. The runs themselves need the bundle's wheels and the device's 16 cores."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "device-bench.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--out", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "DEVBENCH_TMP": str(tmp_path / "tmp")},
        check=False,
    )


def test_dry_run_plans_every_size_on_every_core_count(tmp_path: Path) -> None:
    done = _run(tmp_path, "--dry-run", "--sizes", "32,64", "--cores", "1", "--seconds", "3")
    assert done.returncode == 0, done.stderr
    assert "sizes 32,64, cores 1" in done.stdout
    runs = re.findall(r"^  (\d+) px on (\d+) cores: ~(\d+) s$", done.stdout, re.MULTILINE)
    assert [(size, cores) for size, cores, _ in runs] == [("32", "1"), ("64", "1")]
    total = re.search(r"estimated (\d+) s for 2 runs", done.stdout)
    assert total is not None
    assert int(total[1]) == sum(int(seconds) for _, _, seconds in runs)
    assert (tmp_path / "out" / "device-bench.log").read_text() == done.stdout


def test_more_variants_and_seconds_are_planned_longer(tmp_path: Path) -> None:
    def estimate(*args: str) -> int:
        done = _run(tmp_path, "--dry-run", "--sizes", "32", "--cores", "1", *args)
        found = re.search(r"estimated (\d+) s for 1 runs", done.stdout)
        assert found is not None, done.stdout + done.stderr
        return int(found[1])

    base = estimate("--seconds", "2", "--variants", "defaults")
    assert estimate("--seconds", "3", "--variants", "defaults") > base
    assert estimate("--seconds", "2", "--variants", "defaults,one-instance") > base
    assert estimate("--seconds", "2", "--variants", "defaults", "--peers", "") < base


def test_without_the_bundle_it_says_to_carry_it_and_measures_nothing(tmp_path: Path) -> None:
    done = _run(tmp_path, "--bundle", str(tmp_path / "missing"), "--sizes", "32", "--cores", "1")
    assert done.returncode == 1
    missing = tmp_path / "missing" / "whl"
    assert f"no {missing}: name the bundle folder in the run's carry" in done.stdout
    assert "RUN " not in done.stdout
    assert not (tmp_path / "out" / "serve-benchmark.json").exists()


def test_an_unknown_argument_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, "--size", "32")
    assert done.returncode == 2
    assert "unknown argument: --size" in done.stderr
