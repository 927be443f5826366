"""Ensemble members averaged inside one graph.

The graph takes the largest member's input side. A member trained at a side that divides it sees
the input average-pooled by the exact ratio (a 64 px member in a 128 px graph sees 2x2 means), so
every member reads the image the device preprocessed once. Members' logits (each with its own
temperature and the ensemble's baked into its head) are averaged; their CAMs are brought to the
smallest grid every member's divides (the finest member's where the others nest in it: 4x4 in
8x8; 28x28 for a 112 px member's 7x7 and a 56 px member's 4x4) by nearest upsampling by whole
factors, which keeps each CAM's spatial mean, and averaged, so the ensemble's CAM still averages to
its logits exactly.

Each member returns its stages' feature maps too (see ResNetCAM.stage_features): a head given to
the ensemble reads every member's pooled stage features (each channel's L2 norm over the map,
models.training.tta.channel_norms) of its last `head_stages` stages, and becomes one
more graph output (or several, named by its `output_names`), so a check computed from the members'
features (the refusal check, models.training.refusal) needs no change here. `head_members` limits the
members a head reads (skin's refusal check reads only the members that see the full 112 px side:
fitted on the 56 px members' stage norms as well, it refused fewer of the kinds of image left out of
its fit, colour fundus photographs 68% instead of 87%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.training.tta import DihedralAverage

# A head's input: per member it reads, per stage read (earliest first), the globally pooled features (N, channels).
PooledFeatures = list[list[torch.Tensor]]
# The largest common heatmap grid an ensemble's CAM output may take (7x7 and 4x4 members meet at 28x28).
MAX_CAM_SIDE = 64


class Ensemble(nn.Module):
    """forward(x) -> (mean logits, mean CAM, *each head's output) over the members."""

    def __init__(self, members: list[DihedralAverage], sides: list[int], heads: dict[str, nn.Module] | None = None,
                 side: int | None = None, head_stages: int | None = None,
                 head_members: Sequence[int] | None = None):
        """`head_stages`: how many of each member's last stages a head reads (default every stage);
        `head_members`: the indices of the members a head reads (default every member)."""
        super().__init__()
        if head_stages is not None and head_stages < 1:
            raise ValueError(f"a head reads at least one stage, got head_stages={head_stages}")
        self.head_stages = head_stages
        if not members or len(members) != len(sides):
            raise ValueError("an ensemble needs one input side per member, and at least one member")
        self.head_members = tuple(range(len(members)) if head_members is None else sorted(set(head_members)))
        if not self.head_members or not set(self.head_members) <= set(range(len(members))):
            raise ValueError(f"a head reads one or more of the {len(members)} members (indices 0 to "
                             f"{len(members) - 1}), got {list(head_members or [])}")
        self.side = side or max(sides)
        odd = [s for s in sides if self.side % s]
        if odd:
            raise ValueError(f"a member trained at {odd[0]} px cannot see the {self.side} px input through an exact "
                             f"average pool: {self.side} is not a multiple of {odd[0]}. Train members at sides that "
                             "divide the largest one (e.g. 64 and 128)")
        self.members = nn.ModuleList(members)
        self.pools = [self.side // s for s in sides]
        grids = [self._member_grid(m, s) for m, s in zip(members, sides)]
        grid = math.lcm(*grids)
        if grid > MAX_CAM_SIDE:
            raise ValueError(f"the members' heatmaps ({', '.join(f'{c}x{c}' for c in grids)}) have no common grid "
                             f"of at most {MAX_CAM_SIDE}x{MAX_CAM_SIDE} cells (theirs is {grid}x{grid}): train members at "
                             "sides whose heatmaps nest (e.g. 64 and 128 px)")
        self.cam_side = grid
        self.upsample = [grid // c for c in grids]
        self.heads = nn.ModuleDict(heads or {})

    @staticmethod
    @torch.no_grad()
    def _member_grid(member: DihedralAverage, side: int) -> int:
        channels = member.model.channels
        return int(member(torch.zeros(1, channels, side, side))[1].shape[-1])

    @property
    def output_names(self) -> tuple[str, ...]:
        """logits, cam, then each head's outputs: its name, or the names it declares (`output_names`)
        where it returns several."""
        return ("logits", "cam", *(n for name, head in self.heads.items() for n in _head_outputs(name, head)))

    def member_input(self, x: torch.Tensor, index: int) -> torch.Tensor:
        pool = self.pools[index]
        return F.avg_pool2d(x, pool) if pool > 1 else x

    def _run(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor, PooledFeatures]:
        logits, cams, pooled = [], [], []
        for i, member in enumerate(self.members):
            member_logits, cam, maps = member.forward_stages(self.member_input(x, i))
            logits.append(member_logits)
            up = self.upsample[i]
            cams.append(F.interpolate(cam, scale_factor=up, mode="nearest") if up > 1 else cam)
            if pool and i in self.head_members:
                pooled.append(member.pooled(maps if self.head_stages is None else maps[-self.head_stages :]))
        return torch.stack(logits).mean(0), torch.stack(cams).mean(0), pooled

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, cam, pooled = self._run(x, bool(self.heads))
        extra = []
        for head in self.heads.values():
            out = head(pooled)
            extra += list(out) if isinstance(out, tuple) else [out]
        return (logits, cam, *extra)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(mean logits, per member a head reads the (N, F) pooled stage features, stages
        concatenated): what a head reads, for fitting one."""
        logits, _, pooled = self._run(x, True)
        return logits, [torch.cat(stages, dim=1) for stages in pooled]


def _head_outputs(name: str, head: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(head, "output_names", (name,)))
