"""Run a kopf operator in-process against the test cluster with ``kopf.testing.KopfRunner``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from kopf.testing import KopfRunner


@contextlib.contextmanager
def run_operator(
    module: str,
    *,
    namespaces: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    timeout: float = 60,
) -> Iterator[KopfRunner]:
    """Run ``kopf run -m module`` limited to ``namespaces`` (all when empty) until the block ends.

    The runner's exit status is checked on the way out, so an operator that crashed fails the test.
    """
    args = ["run", "--standalone", "--verbose", "-m", module]
    args += [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
    args += list(extra_args)
    runner = KopfRunner(args, timeout=timeout)
    try:
        with runner:
            yield runner
    except BaseException as exc:
        # Read the output only now: inside the block, KopfRunner.output waits for the operator
        # to exit. It shows what the operator was doing when the test gave up on it.
        with contextlib.suppress(Exception):  # a courtesy: never mask the failure itself
            exc.add_note(f"operator output (tail):\n{runner.output[-6000:]}")
        raise
    assert runner.exception is None, (
        f"operator crashed: {runner.exception!r}\n{runner.output[-4000:]}"
    )
    assert runner.exit_code == 0, runner.output[-4000:]
