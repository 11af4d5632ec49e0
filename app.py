"""The embedded server: `python app.py` serves logsvc on the environment's
settings (SQLite under ./data by default). The factory lives in
`logsvc.server`; it is re-exported here for `from app import create_app`."""
if __name__ == "__main__":
    # Before anything else imports socket, threading or ssl.
    from gevent import monkey

    monkey.patch_all()

import sys

from logsvc.server import create_app, serve

__all__ = ["create_app", "serve"]

if __name__ == "__main__":
    sys.exit(serve())
