"""Optimization profiles: ``NAME:MIN:OPT:MAX`` with dims written ``1x3x32x32``.

Parsing and checking are pure; a profile that can never be satisfied (min > opt, opt > max, a
rank or a static dimension that contradicts the model) fails before any conversion starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from trtops_worker.builder.errors import ConfigError
from trtops_worker.builder.model import TensorSpec
from trtops_worker.cachekey import ProfileIngredients

__all__ = ["check_profiles", "parse_profile"]


def _dims(text: str, where: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise ConfigError(
            "InvalidProfile", f"{where}: {text!r} is not dims like 1x3x32x32"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise ConfigError("InvalidProfile", f"{where}: every dimension must be >= 1, got {text!r}")
    return dims


def parse_profile(text: str) -> ProfileIngredients:
    """Parse one ``NAME:MIN:OPT:MAX``; the name may itself contain ``:`` (``input:0``)."""
    parts = text.rsplit(":", 3)
    if len(parts) != 4 or not parts[0]:
        raise ConfigError(
            "InvalidProfile",
            f"profile {text!r} must be NAME:MIN:OPT:MAX, e.g. input:1x3x32x32:8x3x32x32:32x3x32x32",
        )
    name, lo, opt, hi = parts
    where = f"profile for {name!r}"
    p = ProfileIngredients(name, _dims(lo, where), _dims(opt, where), _dims(hi, where))
    if not len(p.min) == len(p.opt) == len(p.max):
        raise ConfigError("InvalidProfile", f"{where}: min, opt and max must have the same rank")
    if any(a > b for a, b in zip(p.min, p.opt, strict=True)):
        raise ConfigError("InvalidProfile", f"{where}: min {list(p.min)} exceeds opt {list(p.opt)}")
    if any(a > b for a, b in zip(p.opt, p.max, strict=True)):
        raise ConfigError("InvalidProfile", f"{where}: opt {list(p.opt)} exceeds max {list(p.max)}")
    return p


def check_profiles(profiles: Sequence[ProfileIngredients], inputs: Sequence[TensorSpec]) -> None:
    """Every profile names a model input once, with its rank and its static dimensions."""
    by_name = {s.name: s for s in inputs}
    seen: set[str] = set()
    for p in profiles:
        spec = by_name.get(p.input)
        if spec is None:
            raise ConfigError(
                "InvalidProfile",
                f"profile for {p.input!r}: the model has no such input ({sorted(by_name)})",
            )
        if p.input in seen:
            raise ConfigError("InvalidProfile", f"two profiles for input {p.input!r}")
        seen.add(p.input)
        if len(p.min) != len(spec.shape):
            raise ConfigError(
                "InvalidProfile",
                f"profile for {p.input!r} has rank {len(p.min)}, the input has {list(spec.shape)}",
            )
        for i, want in enumerate(spec.shape):
            if want != -1 and not p.min[i] == p.opt[i] == p.max[i] == want:
                raise ConfigError(
                    "InvalidProfile",
                    f"profile for {p.input!r}: dimension {i} is fixed at {want} in the model",
                )
