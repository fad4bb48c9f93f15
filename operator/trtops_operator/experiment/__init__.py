"""Precision experiments (``spec.experiment``, ``docs/experiments.md``): variants of one engine
served beside the baseline at fixed weights, measured, compared and one recommended.

- :mod:`~trtops_operator.experiment.judge` (pure): per-arm figures, significance, recommendation
- :mod:`~trtops_operator.experiment.step` (pure): the reconcile step and ``status.experiment``
- :mod:`~trtops_operator.experiment.prometheus` (I/O): measuring the arms
- :mod:`~trtops_operator.experiment.run`: when a measurement is due, for the driver
"""
