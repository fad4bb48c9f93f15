"""Calibration or validation data from the serving pods' request sample (``source: sample``).

The sample folder is ``<storage>/samples/<engine>`` (``trtops_worker.sample_layout``): one
``.npz`` per serving process and revision, written atomically by ``serve/sampling.py``. Every
file whose arrays fit the model (names, shapes, datatypes, as ``data.load_input_set`` checks
them) is used; a file that does not (written before the model changed, say) is left out and
logged. Rows of the most common shape are kept, shuffled with a seed taken from their bytes (the
same sample gives the same set, so the same cache key), and cut to ``max_samples``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from trtops_worker.builder.data import InputSet, load_input_set
from trtops_worker.builder.errors import BuildError, CalibrationError, ConfigError
from trtops_worker.builder.model import TensorSpec
from trtops_worker.sample_layout import SAMPLE_SUFFIX

__all__ = ["choose_input_set", "load_sample"]

log = logging.getLogger(__name__)
_ALL = 1 << 62  # no cut while reading one file


def load_sample(
    root: Path, inputs: tuple[TensorSpec, ...], max_samples: int, *, kind: str
) -> tuple[InputSet | None, str]:
    """The request sample under ``root`` as one input set, and a sentence saying what it holds
    (``None`` when no file fits the model). ``kind``: ``"calibration"`` or ``"validation"``."""
    sets: list[InputSet] = []
    skipped = 0
    for path in sorted(root.glob(f"*/*{SAMPLE_SUFFIX}")) if root.is_dir() else []:
        try:
            sets.append(load_input_set(path, inputs, _ALL, kind=kind))
        except BuildError as e:  # another model's sample, or a damaged file: not this build's
            log.warning("request sample %s left out: %s", path, e.message)
            skipped += 1
    if not sets:
        return None, f"the request sample under {root} holds no file for this model"
    names = sorted(sets[0].arrays)

    def shape(s: InputSet) -> tuple[tuple[int, ...], ...]:
        return tuple(s.arrays[n].shape[1:] for n in names)

    common, _ = Counter(shape(s) for s in sets).most_common(1)[0]
    used = [s for s in sets if shape(s) == common]
    arrays = {n: np.concatenate([s.arrays[n] for s in used]) for n in names}
    digest = hashlib.sha256()
    for n in names:
        digest.update(n.encode() + b"\0" + np.ascontiguousarray(arrays[n]).tobytes())
    sha = digest.hexdigest()
    rows = len(arrays[names[0]])
    order = np.random.default_rng(int(sha[:16], 16)).permutation(rows)[:max_samples]
    arrays = {n: np.ascontiguousarray(a[order]) for n, a in arrays.items()}
    left_out = skipped + len(sets) - len(used)
    note = f"request sample: {len(order)} of {rows} rows from {len(used)} file(s)"
    note += f", {left_out} file(s) left out" if left_out else ""
    return InputSet(arrays=arrays, sha256=sha, samples=len(order)), note


def choose_input_set(
    file: Path | None,
    sample: Path | None,
    min_rows: int,
    inputs: tuple[TensorSpec, ...],
    max_samples: int,
    *,
    kind: str,
) -> tuple[InputSet | None, str]:
    """The request sample under ``sample`` when it holds ``min_rows`` rows (or ``max_samples``
    if fewer), else the ``file``; and a sentence saying which was used and why. ``None`` when
    neither is given. Raises ``BuildError`` when the sample is too small and no file is given,
    or when the file does not fit the model."""
    why = ""
    if sample is not None:
        chosen, note = load_sample(sample, inputs, max_samples, kind=kind)
        if chosen is not None and chosen.samples >= min(min_rows, max_samples):
            return chosen, note
        why = note if chosen is None else f"{note}, fewer than {min_rows}"
        if file is None:
            prefix = "Calibration" if kind == "calibration" else "Validation"
            raise (CalibrationError if kind == "calibration" else ConfigError)(
                f"{prefix}SampleTooSmall", f"{kind} from the request sample: {why}"
            )
    if file is None:
        return None, ""
    chosen = load_input_set(file, inputs, max_samples, kind=kind)
    return chosen, f"file {file.name}" + (f" ({why})" if why else "")
