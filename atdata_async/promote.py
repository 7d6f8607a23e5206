"""Promotion of local dataset entries to ATProto (async core)."""

from ._promote import (
    PromotionPlan,
    ShardPlan,
    plan_promotion,
    preview_promotion,
    promote_to_atmosphere,
)

__all__ = [
    "PromotionPlan",
    "ShardPlan",
    "plan_promotion",
    "preview_promotion",
    "promote_to_atmosphere",
]
