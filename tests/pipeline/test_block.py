"""pipeline/block.walk_blocks (the one onload / run / offload loop) and pipeline/report.format_rows."""
import pytest
import torch
from torch import nn

from sparsekit.pipeline.block import walk_blocks
from sparsekit.pipeline.capture import BlockInputs
from sparsekit.pipeline.placement import Placement
from sparsekit.pipeline.report import format_rows


class Recording(Placement):
    def __init__(self):
        self.events = []

    def onload(self, index, block):
        self.events.append(("on", index))

    def offload(self, index, block):
        self.events.append(("off", index))


class AddIndex(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index

    def forward(self, x):
        return x + self.index + 1


def inputs(n=5, batch=2):
    hidden = torch.zeros(n, 3, 4)
    return BlockInputs(hidden, batch, {b: [((), {})] * 3 for b in (batch, n % batch or batch)})


def test_every_block_runs_on_its_turn_and_feeds_the_next():
    blocks, placement, data = nn.ModuleList(AddIndex(i) for i in range(3)), Recording(), inputs()
    seen = []
    walk_blocks(blocks, placement, data, torch.device("cpu"),
                lambda i, b: seen.append((i, data.hidden[0, 0, 0].item(), placement.events[-1])))
    assert seen == [(0, 0.0, ("on", 0)), (1, 1.0, ("on", 1)), (2, 3.0, ("on", 2))]
    assert placement.events == [("on", 0), ("off", 0), ("on", 1), ("off", 1), ("on", 2), ("off", 2)]
    assert torch.equal(data.hidden, torch.full((5, 3, 4), 3.0))  # the last block's output is not computed


def test_forward_last_start_and_done():
    blocks, placement, data = nn.ModuleList(AddIndex(i) for i in range(3)), Recording(), inputs()
    done = []
    walk_blocks(blocks, placement, data, torch.device("cpu"), start=1, forward_last=True,
                done=lambda i, b: done.append((i, data.hidden[4, 2, 3].item())))
    assert done == [(1, 2.0), (2, 5.0)]
    assert placement.events == [("on", 1), ("off", 1), ("on", 2), ("off", 2)]


def test_a_failing_step_still_offloads_its_block():
    blocks, placement = nn.ModuleList(AddIndex(i) for i in range(3)), Recording()

    def fail_on_second(index, block):
        if index == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        walk_blocks(blocks, placement, inputs(), torch.device("cpu"), fail_on_second)
    assert placement.events == [("on", 0), ("off", 0), ("on", 1), ("off", 1)]


def test_format_rows_aligns_columns():
    rows = [("layer", "shape", "sec"), ("a.q_proj", "64x64", "0.10"), ("total", "", "12.50")]
    assert format_rows(rows, align="<>").splitlines() == [
        "layer     shape    sec",
        "a.q_proj  64x64   0.10",
        "total            12.50",
    ]
    assert format_rows([("key", "value"), ("longer key", "v")]).splitlines() == ["key         value", "longer key  v"]
    assert format_rows([("a", "b")], align="<>", min_widths=(3, 4)) == "a       b"
