"""Promotion of local dataset entries to ATProto (async core)."""

from ._pipeline.batch import PromotionOutcome, promote_many
from ._pipeline.cleanup import CleanupReport, cleanup_promotions
from ._pipeline.executor import CredentialSource, DaskExecutor
from ._pipeline.promote import (
    PromotionPlan,
    ShardPlan,
    plan_promotion,
    preview_promotion,
    promote_to_atmosphere,
)

__all__ = [
    "CleanupReport",
    "CredentialSource",
    "DaskExecutor",
    "PromotionOutcome",
    "PromotionPlan",
    "ShardPlan",
    "cleanup_promotions",
    "plan_promotion",
    "preview_promotion",
    "promote_many",
    "promote_to_atmosphere",
]
