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
    serve(DomainDispatcherApplication(create_backend_app), host="127.0.0.1",
          port=int(sys.argv[1]), threads=16, connection_limit=1000, _quiet=True)
