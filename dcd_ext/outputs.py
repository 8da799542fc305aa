"""Named results of the loss operators, shared by dcd_ext.ops and dcd_ext.reference."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class DistillOutput(NamedTuple):
    dist: Tensor
    hard: Tensor
    dist_weight: Tensor
    hard_weight: Tensor


class DCDLossOutput(NamedTuple):
    loss: Tensor
    con: Tensor
    dist: Tensor
    hard: Tensor
    i2t_dist_weight: Tensor
    i2t_hard_weight: Tensor
    t2i_dist_weight: Tensor
    t2i_hard_weight: Tensor
