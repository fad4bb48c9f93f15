"""Fixtures for the operator-metrics tests: the CRD fixture is the operator tests' own."""

from tests.operator.conftest import trtengine_crd

__all__ = ["trtengine_crd"]
