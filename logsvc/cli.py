"""The command line: `python -m logsvc <command>`.

Operator commands (tokens, users, scopes, clear, prune) work on the store
named by the LOGSVC_* settings directly, without a running server; for
example, to create the first tenant token:

    python -m logsvc tokens create --name ci --project proj_a

Client commands (tail, query, stats, ingest; see terminal.py) talk to a
running server.
"""
import argparse
import getpass
import json
import sys

from .access import credentials
from .client import terminal
from .config import Config, ConfigError
from .store import db, migrations, operations, retention


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "demo", False):
        from logsvc import demo
        return demo.run(Config.from_env(), args.proxy_port)
    if getattr(args, "remote", None):
        try:
            config = Config.from_env()
        except ConfigError as exc:
            print(f"logsvc: {exc}", file=sys.stderr)
            return 2
        return terminal.run(args, config)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        config = Config.from_env()
        db.init(config)
        db.call(migrations.create_schema, config.store_partition_rows)
        result = args.run(args, config)
    except (ConfigError, db.UnsupportedDatabase, migrations.SchemaTooNew) as exc:
        print(f"logsvc: {exc}", file=sys.stderr)
        return 2
    except (credentials.NotFound, credentials.Conflict, ValueError,
            retention.PruneBusy) as exc:
        print(f"logsvc: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _capabilities(args):
    return {"logs": not args.no_logs, "ingest": args.ingest}


def _tokens_create(args, config):
    return credentials.create_token(args.name, args.project, args.container, _capabilities(args))


def _users_create(args, config):
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.username}: ")
    if len(password) < 8:
        raise ValueError("the password needs at least 8 characters")
    return credentials.create_user(args.username, password, args.project, args.container,
                                  _capabilities(args))


def _clear(args, config):
    if not args.yes:
        raise ValueError("clear deletes every entry; pass --yes to confirm")
    return operations.clear()


def _parser():
    parser = argparse.ArgumentParser(prog="python -m logsvc",
                                     description="Operate a logsvc store.")
    commands = parser.add_subparsers(title="commands")

    tokens = commands.add_parser("tokens", help="scoped API tokens").add_subparsers()
    create = tokens.add_parser("create", help="create a token; its secret is printed once")
    create.add_argument("--name", required=True)
    _scope_arguments(create)
    create.set_defaults(run=_tokens_create)
    tokens.add_parser("list", help="list tokens (never their secrets)").set_defaults(
        run=lambda args, config: credentials.list_tokens())
    revoke = tokens.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(run=lambda args, config: credentials.revoke_token(args.id))

    users = commands.add_parser("users", help="HTTP Basic users").add_subparsers()
    create = users.add_parser("create", help="create a user (password prompted)")
    create.add_argument("--username", required=True)
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    _scope_arguments(create)
    create.set_defaults(run=_users_create)
    users.add_parser("list", help="list users").set_defaults(
        run=lambda args, config: credentials.list_users())
    delete = users.add_parser("delete", help="delete a user")
    delete.add_argument("username")
    delete.set_defaults(run=lambda args, config: credentials.delete_user(args.username)
                        or {"username": args.username, "deleted": True})

    scopes = commands.add_parser("scopes", help="tenant scopes").add_subparsers()
    destroy = scopes.add_parser("destroy", help="destroy a container's scope")
    destroy.add_argument("project")
    destroy.add_argument("container")
    destroy.set_defaults(run=lambda args, config: operations.destroy_scope(
        args.project, args.container, config))

    clear = commands.add_parser("clear", help="delete every entry (ids jump by 10000)")
    clear.add_argument("--yes", action="store_true", help="confirm")
    clear.set_defaults(run=_clear)
    commands.add_parser(
        "migrate", help="create the store, or upgrade it to this version's schema").set_defaults(
        run=lambda args, config: {"schemaVersion": migrations.SCHEMA_VERSION})
    commands.add_parser("prune", help="run retention now").set_defaults(
        run=lambda args, config: {"removed": retention.prune(config, wait_s=30)})
    terminal.add_commands(commands)
    demo = commands.add_parser("demo", help="logsvc + a capturing proxy + live traffic")
    demo.add_argument("--proxy-port", type=int, default=8081)
    demo.set_defaults(demo=True)
    return parser


def _scope_arguments(command):
    command.add_argument("--project", required=True, help="project id")
    command.add_argument("--container", default=None, help="container id (default: all)")
    command.add_argument("--no-logs", action="store_true", help="do not grant reading")
    command.add_argument("--ingest", action="store_true", help="grant writing")
