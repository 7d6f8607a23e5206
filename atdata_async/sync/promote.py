"""Blocking twins of ``atdata_async.promote``."""

from .. import _promote
from .._portal import blocking_function
from .._promote import PromotionPlan, ShardPlan, plan_promotion

promote_to_atmosphere = blocking_function(_promote.promote_to_atmosphere)
preview_promotion = blocking_function(_promote.preview_promotion)

__all__ = [
    "PromotionPlan",
    "ShardPlan",
    "plan_promotion",
    "preview_promotion",
    "promote_to_atmosphere",
]
