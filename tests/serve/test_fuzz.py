"""Random JSON thrown at ``infer``: never a 5xx, and the server stays up."""

from __future__ import annotations

import json
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server

scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=30,
)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x", ""]) | st.text(max_size=4) | values,
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "fp32", "BF16"]) | values,
        "shape": st.lists(st.integers(-2, 4), max_size=5) | st.just([1, 3, 32, 32]) | values,
        "data": st.lists(st.floats(width=32) | st.integers(-3, 3), max_size=40) | values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "x"]), values, max_size=2
        ),
    },
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "inputs": st.lists(tensor, max_size=3) | values,
            "outputs": st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["logits", "x"]) | values})
            )
            | values,
            "id": st.text(max_size=5) | values,
            "parameters": st.dictionaries(
                st.sampled_from(["binary_data_output"]), values, max_size=1
            )
            | values,
        },
    )
    | values
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, header=st.none() | st.integers(-1, 50).map(str) | st.text(max_size=3))
def test_random_bodies_never_get_a_5xx(server: Server, body: Any, header: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None and header.isascii() and header.isprintable():
        headers["Inference-Header-Content-Length"] = header
    data = json.dumps(body, allow_nan=True).encode()
    response = requests.post(server.infer_url(), data=data, headers=headers, timeout=10)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)


def test_server_is_still_up_after_the_fuzzing(server: Server) -> None:
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    assert server.metric("trtops_requests_total", outcome="server_error") == 0
