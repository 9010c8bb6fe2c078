"""How the QAT chain's integer codes move: the diagnostics issue 14 asks for when a PTQ start trains on.

Every step, the fraction of the students' codes that changed in that step (``code_flips``) and the
fraction that differ from the codes at the start of the run (``codes_moved``). A PTQ start whose latents
sit at their cells' centres flips nothing until Adam has carried a latent half a cell; a start that
flips many codes early is undoing the PTQ method's choices.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils.errors import TritiumError


class CodeTrackingError(TritiumError, ValueError):
    """Code flips asked for a student whose linears have no integer codes (plain straight-through grids)."""


class CodeFlipTracker:
    """A trainer step metric (``Trainer(step_metrics=[tracker])``) over the students' current codes.

    It counts from the codes the students hold when it is made (the start's, before a checkpoint loads): in a
    resumed run ``codes_moved`` still counts from the start, and the first step after resuming reports, as its
    ``code_flips``, every flip since the start."""

    def __init__(self, students: dict[str, nn.Module]):
        lacking = [name for name, module in students.items() if not hasattr(module, "codes")]
        if lacking:
            raise CodeTrackingError(f"track_code_flips needs students with integer codes (a ternary dlt or a uniform "
                                    f"grid); {lacking[0]} has none: drop the option for this grid")
        self.students = students
        self.start = self._codes()
        self.previous = {name: codes.clone() for name, codes in self.start.items()}
        self.total = sum(codes.numel() for codes in self.start.values())

    @torch.no_grad()
    def _codes(self) -> dict[str, torch.Tensor]:
        return {name: module.codes() for name, module in self.students.items()}

    @torch.no_grad()
    def __call__(self, trainer=None) -> dict:
        now = self._codes()
        flipped = sum(int((now[name] != self.previous[name]).sum()) for name in now)
        moved = sum(int((now[name] != self.start[name]).sum()) for name in now)
        self.previous = now
        return {"code_flips": flipped / self.total, "codes_moved": moved / self.total}
