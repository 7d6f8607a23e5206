"""moto's S3 app served by waitress instead of werkzeug's development server, which
answers every request with ``Connection: close``: each S3 request of a benchmark would
then open and close a TCP connection of its own (on loopback, connect and close were a
quarter of a streamed copy's client CPU, and their cost grows with the sockets left in
TIME_WAIT by earlier rounds). Real S3 servers keep connections alive; so does this.

    python tests/moto_keepalive.py PORT
"""

import sys

from moto.server import DomainDispatcherApplication, create_backend_app
from waitress import serve

if __name__ == "__main__":
    # bodies up to 64 MiB stay in memory (waitress's default spools those over 512 KiB
    # in and 1 MiB out to temporary files: disk I/O that no S3 client should be billed)
    serve(DomainDispatcherApplication(create_backend_app), host="127.0.0.1",
          port=int(sys.argv[1]), threads=16, connection_limit=1000, _quiet=True,
          inbuf_overflow=64 << 20, outbuf_overflow=64 << 20)
