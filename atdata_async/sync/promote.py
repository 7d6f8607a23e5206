"""Blocking twin of ``atdata_async.promote``."""

from .. import _promote
from .._portal import blocking_function
from .._promote import PromotionPlan, ShardPlan, plan_promotion

promote_to_atmosphere = blocking_function(_promote.promote_to_atmosphere)

__all__ = ["PromotionPlan", "ShardPlan", "plan_promotion", "promote_to_atmosphere"]
