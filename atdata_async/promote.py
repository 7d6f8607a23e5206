"""Promotion of local dataset entries to ATProto (async core)."""

from ._cleanup import CleanupReport, cleanup_promotions
from ._promote import (
    PromotionPlan,
    ShardPlan,
    plan_promotion,
    preview_promotion,
    promote_to_atmosphere,
)

__all__ = [
    "CleanupReport",
    "PromotionPlan",
    "ShardPlan",
    "cleanup_promotions",
    "plan_promotion",
    "preview_promotion",
    "promote_to_atmosphere",
]
