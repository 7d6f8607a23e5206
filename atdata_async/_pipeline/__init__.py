"""The promotion pipeline: plan, journal, execution (local or Dask), batches and cleanup.

It composes the backends and never speaks a wire protocol itself.
"""
