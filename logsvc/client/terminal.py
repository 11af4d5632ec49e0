"""Command-line client commands that talk to a running server:
`tail`, `query`, `stats`, `ingest`, `import` (access logs) and `proxy`
(a capturing reverse proxy that sends what it sees to the server).

They find the server at LOGSVC_URL (default http://LOGSVC_HOST:LOGSVC_PORT)
and send LOGSVC_TOKEN (default: the admin token in the data dir); `--url`
and `--token` override both. Exit codes: 0 done, 1 the server refused
(4xx), 2 a file given could not be read, 3 the server could not be
reached, 130 interrupted.
"""
import json
import os
import sys

import orjson
import requests

from logsvc.entry import text_line

from . import ApiError, Client, Gap, Reset

COLOURS = {"debug": "\033[2m", "info": "", "warn": "\033[33m", "error": "\033[31m"}
RESET = "\033[0m"
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


def add_commands(commands):
    tail = commands.add_parser("tail", help="follow entries live (resumes where it stopped)")
    _filters(tail)
    tail.add_argument("--json", action="store_true", help="one JSON entry a line")
    tail.add_argument("--replay", type=int, default=10, help="recent entries to show first")
    tail.add_argument("--since-id", type=int, help="start after this entry id")
    tail.add_argument("--state-file", help="remember the last id here and resume from it")
    tail.set_defaults(remote=_tail)

    query = commands.add_parser("query", help="search entries")
    _filters(query)
    query.add_argument("--limit", type=int, default=50)
    query.add_argument("--last", type=int, help="the newest N entries")
    query.add_argument("--q", help="words or \"a phrase\" in the url, bodies or data")
    query.add_argument("--since", help="epoch ms, ISO-8601 or a duration like 15m")
    query.add_argument("--until")
    query.add_argument("--slowest", action="store_true",
                       help="longest duration first (entries with a duration)")
    query.add_argument("--ndjson", action="store_true", help="one JSON entry a line")
    query.add_argument("--all", action="store_true",
                       help="every matching entry, oldest first, page after page (an export)")
    query.set_defaults(remote=_query)

    stats = commands.add_parser("stats", help="counts by level, service, status…")
    _filters(stats)
    stats.add_argument("--q", help="words or \"a phrase\" in the url, bodies or data")
    stats.add_argument("--since")
    stats.add_argument("--until")
    stats.add_argument("--routes", type=int, default=20, help="rows of the route table")
    stats.set_defaults(remote=_stats)

    ingest = commands.add_parser("ingest", help="send a file of entries (NDJSON or a JSON array)")
    ingest.add_argument("file", help="path, or - for standard input")
    ingest.add_argument("--batch", type=int, default=1000)
    ingest.set_defaults(remote=_ingest)

    importer = commands.add_parser(
        "import", help="send an existing access log (nginx combined, Caddy or Traefik JSON)")
    importer.add_argument("file")
    importer.add_argument("--format", choices=("auto", "nginx", "caddy", "traefik"),
                          default="auto")
    importer.add_argument("--service")
    importer.add_argument("--project")
    importer.add_argument("--container")
    importer.add_argument("--batch", type=int, default=1000)
    importer.add_argument("--rejects", metavar="FILE",
                          help="write each line not stored, with its reason, as NDJSON")
    importer.set_defaults(remote=_import)

    edge = commands.add_parser("proxy", help="run a capturing reverse proxy")
    edge.add_argument("--listen", default="127.0.0.1:8081", help="host:port to serve on")
    edge.add_argument("--upstream", required=True, help="URL to forward to")
    edge.add_argument("--service")
    edge.add_argument("--project")
    edge.add_argument("--container")
    edge.add_argument("--trusted-proxy", action="append", default=[],
                      help="address whose X-Forwarded-For is believed (repeatable)")
    edge.set_defaults(remote=_proxy)

    alerts = commands.add_parser("alerts", help="alert rules (list, create, delete)")
    actions = alerts.add_subparsers(title="actions")
    listed = actions.add_parser("list", help="the rules you manage, with their state")
    listed.add_argument("--json", action="store_true", help="the rules as JSON")
    listed.set_defaults(remote=_alerts_list)
    create = actions.add_parser(
        "create", help="notify a webhook when a metric of a search crosses a threshold")
    create.add_argument("--name", required=True)
    _filters(create)
    create.add_argument("--q", help="words or \"a phrase\" in the url, bodies or data")
    create.add_argument("--metric", required=True,
                        choices=("count", "rate", "errorRate", "p50", "p95", "p99"))
    create.add_argument("--op", default=">", choices=(">", ">=", "<", "<="))
    create.add_argument("--threshold", type=float, required=True)
    create.add_argument("--window", default="5m", help="1m to 24h (default 5m)")
    create.add_argument("--for", dest="hold", default="0s",
                        help="how long the condition must hold before it fires")
    create.add_argument("--webhook", required=True, help="where notifications are POSTed")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE")
    create.set_defaults(remote=_alerts_create)
    delete = actions.add_parser("delete", help="delete a rule by id")
    delete.add_argument("id", type=int)
    delete.set_defaults(remote=_alerts_delete)
    alert_commands = (listed, create, delete)

    for command in (tail, query, stats, ingest, importer, edge, *alert_commands):
        command.add_argument("--url", help="server URL (LOGSVC_URL)")
        command.add_argument("--token", help="bearer token (LOGSVC_TOKEN)")


def run(args, config):
    token, source = _token_and_source(args, config)
    client = Client(args.url or config.server_url, token=token)
    try:
        code = args.remote(args, client)
    except ApiError as exc:
        print(f"logsvc: the server refused: {exc}", file=sys.stderr)
        if exc.status == 401:
            print(f"logsvc: {source}", file=sys.stderr)
        return EXIT_REFUSED
    except requests.ConnectionError:
        print(f"logsvc: cannot reach {client.base_url}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except _StateUnwritable as exc:
        print(f"logsvc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a file given on the command line
        if isinstance(exc, requests.RequestException):
            raise
        print(f"logsvc: cannot read {exc.filename or 'the file'}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    return code or 0


def _tail(args, client):
    position = args.since_id
    if position is None and args.state_file and os.path.exists(args.state_file):
        with open(args.state_file) as handle:
            text = handle.read().strip()
            position = int(text) if text.isdigit() else None
    # Where it will resume from, written before anything is shown: a state
    # file that cannot be written is said at once.
    _remember(args.state_file, "" if position is None else str(position))
    colour = sys.stdout.isatty()
    for item in client.stream(last_event_id=position, replay=args.replay, **_filter_params(args)):
        if isinstance(item, Gap):
            print(f"-- entries {item.from_id}..{item.to_id} may be missing (retention) --",
                  file=sys.stderr)
            continue
        if isinstance(item, Reset):
            print("-- the store was reset; following from now --", file=sys.stderr)
            _remember(args.state_file, "")
            continue
        _print_entry(item, args.json, colour)
        _remember(args.state_file, str(item["id"]))


def _query(args, client):
    params = dict(_filter_params(args), q=args.q, since=args.since, until=args.until)
    if args.all:
        return _export(args, client, params)
    if args.last:
        params["last"] = args.last
    else:
        params["limit"] = args.limit
    if args.slowest:
        params["order"] = "slowest"
    page = client.list(**params)
    colour = sys.stdout.isatty()
    for entry in page["entries"]:
        _print_entry(entry, args.ndjson, colour)
    exact = "" if page["totalExact"] else "at least "
    cut = len(page["entries"]) < page["total"] or not page["totalExact"]
    if not args.ndjson or cut:
        more = "; --all for every one" if cut and not args.last and not args.slowest else ""
        print(f"-- {len(page['entries'])} of {exact}{page['total']}{more} --", file=sys.stderr)


EXPORT_PAGE = 1000


def _export(args, client, params):
    """Every matching entry, oldest first, paging by id underneath; a
    count on the terminal's standard error as it goes."""
    if args.last or args.slowest:
        print("logsvc: --all pages oldest first: it takes no --last or --slowest",
              file=sys.stderr)
        return EXIT_USAGE
    colour = sys.stdout.isatty()
    progress = sys.stderr.isatty()
    n = 0
    for entry in client.iter_entries(page_size=EXPORT_PAGE, **params):
        _print_entry(entry, args.ndjson, colour)
        n += 1
        if progress and n % EXPORT_PAGE == 0:
            print(f"\r-- {n:,} entries --", end="", file=sys.stderr, flush=True)
    print(f"\r-- {n:,} entries, all that match --", file=sys.stderr)


def _stats(args, client):
    stats = client.stats(**_filter_params(args), q=args.q, since=args.since, until=args.until,
                         topRoutes=args.routes)
    print(f"total  {stats['total']:>12,}")
    for name in ("byLevel", "byStatus", "byKind", "bySource", "byService", "byProject",
                 "byContainer"):
        if stats[name]:
            print(f"\n{name[2:].lower()}")
            for key, n in sorted(stats[name].items(), key=lambda kv: -kv[1])[:20]:
                print(f"  {key:<30} {n:>12,}")
    latency = stats["latency"]
    if latency["count"]:
        print(f"\nlatency (ms) over {latency['count']:,} timed entries")
        print("  " + "  ".join(f"{name} {_ms(latency[name])}"
                               for name in ("p50", "p90", "p95", "p99", "max")))
    if stats["byRoute"]:
        print(f"\n{'route':<40} {'calls':>10} {'errors':>7} {'p50':>9} {'p95':>9} {'p99':>9}")
        for row in stats["byRoute"]:
            rate = f"{row['errors'] / row['total']:.1%}" if row["total"] else "-"
            print(f"{row['route'][:40]:<40} {row['total']:>10,} {rate:>7} "
                  f"{_ms(row['p50']):>9} {_ms(row['p95']):>9} {_ms(row['p99']):>9}")


def _ms(value):
    return "-" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _ingest(args, client):
    handle = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    with handle:
        raw = handle.read()
    stripped = raw.lstrip()
    # Read whole before anything is sent: a file that is not JSON is named
    # with its line, and none of it is stored.
    if stripped.startswith(b"["):
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _unreadable(args.file, f"not a JSON array ({exc})")
    else:
        items = None
        if stripped.startswith(b"{") and b"\n" in stripped.strip():
            try:  # one object over several lines (as the API takes one)
                items = [orjson.loads(raw)]
            except orjson.JSONDecodeError:
                pass  # NDJSON
        if items is None:
            items = []
            for number, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        items.append(orjson.loads(line))
                    except orjson.JSONDecodeError as exc:
                        return _unreadable(args.file, f"line {number} is not JSON: {exc.msg} "
                                                      f"at column {exc.colno}")
    total = {"accepted": 0, "rejected": []}
    for start in range(0, len(items), args.batch):
        answer = client.ingest(items[start:start + args.batch], batch_size=args.batch)
        total["accepted"] += answer["accepted"]
        total["rejected"] += [{**r, "index": r["index"] + start} for r in answer["rejected"]]
        _progress(min(start + args.batch, len(items)), len(items))
    print(file=sys.stderr)
    print(json.dumps({"accepted": total["accepted"], "rejected": len(total["rejected"]),
                      "firstRejected": total["rejected"][:5]}))
    if total["rejected"] and not total["accepted"]:
        raise ApiError(422, "every entry was rejected")


def _unreadable(name, why):
    print(f"logsvc: {'standard input' if name == '-' else name}: {why}; nothing was sent",
          file=sys.stderr)
    return EXIT_USAGE


def _import(args, client):
    from logsvc.capture.importer import parse_line

    labels = {k: v for k, v in (("serviceName", args.service), ("projectId", args.project),
                                ("containerId", args.container)) if v}
    size = os.path.getsize(args.file)
    batch, lines, skipped, sent = [], [], 0, {"accepted": 0, "rejected": 0}
    rejects = open(args.rejects, "w") if args.rejects else None  # noqa: SIM115

    def reject(number, text, reason):
        if rejects is not None:
            rejects.write(json.dumps({"line": number, "reason": reason, "text": text}) + "\n")

    def send():
        answer = client.ingest(batch, batch_size=args.batch)
        sent["accepted"] += answer["accepted"]
        sent["rejected"] += answer.get("rejectedCount", len(answer["rejected"]))
        for item in answer["rejected"]:
            number, text = lines[item["index"]]
            reject(number, text, item["errors"])
        batch.clear()
        lines.clear()

    try:
        with open(args.file, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                text = line.decode("utf-8", "replace").rstrip("\n")
                entry = parse_line(text, args.format)
                if entry is None:
                    if text.strip():
                        skipped += 1
                        reject(number, text, f"not a {_FORMATS[args.format]} line")
                    continue
                batch.append({**entry, **labels})
                lines.append((number, text))
                if len(batch) >= args.batch:
                    send()
                    _progress(handle.tell(), size, unit="bytes")
            if batch:
                send()
    finally:
        if rejects is not None:
            rejects.close()
    _progress(size, size, unit="bytes")
    print(file=sys.stderr)
    print(json.dumps({**sent, "unreadable": skipped}))


_FORMATS = {"auto": "nginx/Apache combined, Caddy JSON or Traefik JSON",
            "nginx": "nginx/Apache combined", "caddy": "Caddy JSON", "traefik": "Traefik JSON"}


def _proxy(args, client):
    from logsvc.capture import HttpSink, proxy

    sink = HttpSink(client.base_url, client.session.headers.get("Authorization", "")[7:])
    app = proxy.build(args.upstream, sink, service_name=args.service,
                      project_id=args.project, container_id=args.container,
                      trusted_proxies=args.trusted_proxy)
    print(f"proxy on http://{args.listen} -> {args.upstream}, entries to {client.base_url}",
          file=sys.stderr, flush=True)
    proxy.serve(args.listen, app)


def _progress(done, total, width=30, unit="entries"):
    filled = width * done // total if total else width
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} {unit}",
          end="", file=sys.stderr, flush=True)


def _print_entry(entry, as_json, colour):
    if as_json:
        print(orjson.dumps(entry).decode(), flush=True)
        return
    line = text_line(entry)
    if colour and COLOURS.get(entry["level"]):
        line = f"{COLOURS[entry['level']]}{line}{RESET}"
    print(line, flush=True)


class _StateUnwritable(Exception):
    pass


def _remember(path, value):
    if path:
        try:
            with open(path + ".tmp", "w") as handle:
                handle.write(value)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            raise _StateUnwritable(f"cannot write the state file {path}: "
                                   f"{exc.strerror or exc}") from None


def _alerts_list(args, client):
    rules = client.alerts()
    if args.json:
        print(orjson.dumps(rules, option=orjson.OPT_INDENT_2).decode())
        return
    if not rules:
        print("no alert rules", file=sys.stderr)
        return
    print(f"{'id':>5}  {'state':<8} {'name':<30} {'condition':<28} {'window':>6}  last notification")
    for rule in rules:
        c = rule["condition"]
        condition = f"{c['metric']} {c['op']} {c['threshold']:g}"
        last = rule["lastNotification"]
        told = "-" if last is None else f"{last['status']} ({last['result'] or 'pending'})"
        print(f"{rule['id']:>5}  {rule['state']:<8} {rule['name'][:30]:<30} "
              f"{condition[:28]:<28} {rule['window']:>6}  {told}")


def _pairs(items, flag):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"logsvc: {flag} takes KEY=VALUE, not {item!r}")
        out[key] = value
    return out


def _alerts_create(args, client):
    filters = {k: v for k, v in {**_filter_params(args), "q": args.q}.items() if v is not None}
    rule = client.create_alert({
        "name": args.name, "filters": filters,
        "condition": {"metric": args.metric, "op": args.op, "threshold": args.threshold},
        "window": args.window, "for": args.hold, "webhook": args.webhook,
        "labels": _pairs(args.label, "--label"),
        "annotations": _pairs(args.annotation, "--annotation")})
    print(orjson.dumps(rule, option=orjson.OPT_INDENT_2).decode())


def _alerts_delete(args, client):
    client.delete_alert(args.id)
    print(f"deleted alert rule {args.id}", file=sys.stderr)


def _filters(command):
    for flag in ("project", "container", "service", "level", "kind", "method", "source",
                 "status", "trace", "route"):
        command.add_argument(f"--{flag}")
    command.add_argument("--min-duration", help="at least this many milliseconds")
    command.add_argument("--max-duration", help="at most this many milliseconds")


def _filter_params(args):
    return {"projectId": args.project, "containerId": args.container,
            "serviceName": args.service, "level": args.level, "kind": args.kind,
            "method": args.method, "source": args.source, "status": args.status,
            "traceId": args.trace, "route": args.route,
            "minDurationMs": args.min_duration, "maxDurationMs": args.max_duration}


def _token_and_source(args, config):
    """The token to send, and a sentence saying where it came from (shown
    when the server answers 401)."""
    where = os.path.join(config.data_dir, "admin_token")
    hint = (f"pass --token or set LOGSVC_TOKEN (the operator's token of a local server is "
            f"in its data directory, {where} by default, or LOGSVC_DATA_DIR/admin_token)")
    if args.token:
        return args.token, f"the token given with --token was refused; {hint}"
    if config.token:
        return config.token, f"the token in LOGSVC_TOKEN was refused; {hint}"
    try:
        with open(where) as handle:
            return handle.read().strip(), (f"the admin token read from {where} was refused "
                                            f"(another server's?); {hint}")
    except OSError:
        return None, f"no token was sent: none given and no {where} here; {hint}"
