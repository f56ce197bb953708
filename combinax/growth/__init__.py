"""Growing a trained small Transformer into a larger one (LiGO, with stacking, interpolation and Net2Net as fixed
settings of the same operator): `grow`, `Grown`, `GrowthOptions`, `METHODS`, and `GrowthRun` for combinax-train."""

from combinax.growth.grow import Grown, check_shapes, grow
from combinax.growth.operator import (METHODS, GrowthError, GrowthOptions, Plan, dims, expand, init_operator,
                                      make_plan, operator_size)

__all__ = ["Grown", "GrowthError", "GrowthOptions", "METHODS", "Plan", "check_shapes", "dims", "expand", "grow",
           "init_operator", "make_plan", "operator_size"]
