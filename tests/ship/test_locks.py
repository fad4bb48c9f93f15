"""The operator image installs exactly the locked dependencies: every requirement of
pyproject.toml is pinned in requirements/operator.lock at a version it allows, every pin carries
hashes, and the Dockerfile installs the lock with --require-hashes. Regenerate the lock with
``pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url
--no-emit-find-links --output-file requirements/operator.lock pyproject.toml``."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.ship.conftest import REPO

LOCK = REPO / "requirements" / "operator.lock"


def pins() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    text = LOCK.read_text()
    out: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            out[canonicalize_name(m.group(1))] = (m.group(2), block.count("--hash=sha256:"))
    return out


def test_every_operator_requirement_is_locked_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = pins()
    for line in project["dependencies"]:
        req = Requirement(line)
        version, _ = locked[canonicalize_name(req.name)]
        assert req.specifier.contains(version), (req, version)
    assert all(n > 0 for _, n in locked.values())
    assert "aiohttp" in locked  # transitive dependencies are locked too (kopf's HTTP client)


def test_the_operator_image_installs_the_lock_with_hashes() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "COPY requirements/operator.lock" in text
    assert "pip install --no-cache-dir --require-hashes --no-deps -r" in text
