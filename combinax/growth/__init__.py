"""Growing a trained small Transformer into a larger one (LiGO, with stacking, interpolation and Net2Net as fixed
settings of the same operator): `grow`, `Grown`, `GrowthOptions`, `METHODS`, and `GrowthRun` for combinax-train."""

import gin as _gin

from combinax.configurable import register as _register
from combinax.growth.grow import TRAINABLE, Grown, check_shapes, grow
from combinax.growth.operator import (METHODS, GrowthError, GrowthOptions, Plan, dims, expand, init_operator,
                                      make_plan, operator_size)
from combinax.growth.run import GrowthRun

_register(globals(), "combinax.growth", ["GrowthRun"])
_gin.external_configurable(GrowthOptions, module="combinax.growth")

__all__ = ["Grown", "GrowthError", "GrowthRun", "GrowthOptions", "METHODS", "Plan", "TRAINABLE", "check_shapes", "dims",
           "expand", "grow", "init_operator", "make_plan", "operator_size"]
