"""The pure model: samples, CIDs, schemas, lexicon records, ids, URLs, part plans and pacing.

Nothing here does I/O or imports a backend at module level; it is what the backends and the
pipeline compute with, and what the tests check without any server.
"""
