"""`python -m logsvc`, and the `logsvc` command of an installed package."""
import sys


def run():
    if len(sys.argv) > 1 and sys.argv[1] in ("proxy", "demo"):
        # These serve HTTP under gevent: patch before anything imports socket.
        from gevent import monkey

        monkey.patch_all()

    from logsvc.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
