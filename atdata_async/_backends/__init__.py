"""The backends: each speaks to one kind of service and translates its errors at one seam.

Redis (``redis_index``), S3 (``s3_store``), ATProto XRPC (``xrpc``, ``identity``,
``atmosphere_index``), plain HTTP(S) (``http_reader``), and the readers built on them.
"""
