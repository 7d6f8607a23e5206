"""Blocking twins of ``atdata_async.promote``; its plan types as they are."""

from .. import promote as _core
from ..promote import *  # noqa: F403  (plan types and the pure planner are shared)
from ._portal import blocking_function

__all__ = _core.__all__

promote_to_atmosphere = blocking_function(_core.promote_to_atmosphere)
preview_promotion = blocking_function(_core.preview_promotion)
cleanup_promotions = blocking_function(_core.cleanup_promotions)
promote_many = blocking_function(_core.promote_many)
