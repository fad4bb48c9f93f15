"""The front ends' busy board (serve/busy.py): a front end runs wide only while it is the one
computing; two boards on one file stand for two front ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from trtops_worker.serve.busy import BusyBoard


def test_a_front_end_is_alone_only_while_no_other_one_computes(tmp_path: Path) -> None:
    first, second, third = (BusyBoard(tmp_path / "busy", i, 3) for i in range(3))
    assert first.enter()  # nobody else busy
    assert not second.enter()  # the first still computes
    first.leave()
    assert not third.enter()  # the second still computes
    second.leave()
    third.leave()
    assert second.enter()
    second.leave()
    for board in (first, second, third):
        board.close()


def test_a_board_refuses_an_index_outside_its_front_ends(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="front end 2 is not one of 2"):
        BusyBoard(tmp_path / "busy", 2, 2)
