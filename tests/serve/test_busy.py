"""The front ends' busy board (serve/busy.py): a front end runs wide only while no other one
has requests in progress; boards on one file stand for the front ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from trtops_worker.serve.busy import BusyBoard


def test_a_front_end_is_alone_only_while_no_other_one_has_requests(tmp_path: Path) -> None:
    first, second, third = (BusyBoard(tmp_path / "busy", i, 3) for i in range(3))
    assert first.alone()  # nobody busy
    first.mark(True)
    assert first.alone()  # only itself
    assert not second.alone()
    second.mark(True)
    assert not first.alone()
    first.mark(False)
    assert second.alone()
    assert not third.alone()
    second.mark(False)
    assert third.alone()
    for board in (first, second, third):
        board.close()


def test_a_board_refuses_an_index_outside_its_front_ends(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="front end 2 is not one of 2"):
        BusyBoard(tmp_path / "busy", 2, 2)
