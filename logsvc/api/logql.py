"""The part of LogQL that Grafana's Loki data source and people send, parsed
into plain values (loki.py evaluates them).

    query   := metric | logs
    logs    := selector stage*
    selector:= "{" [label op string ("," label op string)*] "}"      op: = != =~ !~
    stage   := "|=" s | "!=" s | "|~" s | "!~" s               line filters
             | "|" "json" | "|" "logfmt" | "|" "drop" names     accepted, no effect
             | "|" label cmp value                             label filters
             | "|" "unwrap" label                              in range aggregations
    metric  := term (("+" | "-" | "*" | "/") term)*
    term    := number | "vector(" number ")" | "(" metric ")"
             | fn "(" [number ","] logs "[" duration "]" ")"      count_over_time, rate, ...
             | agg ["by"|"without" "(" labels ")"] "(" [number ","] metric ")"
               ["by"|"without" "(" labels ")"]

Anything else is a LogQLError whose message says what is not supported.
"""
import dataclasses
import re

from logsvc.entry import parse_duration_ms

MATCH_OPS = ("=~", "!~", "!=", "=")
LINE_OPS = ("|=", "!=", "|~", "!~")
COMPARE_OPS = ("==", "!=", ">=", "<=", "=~", "!~", ">", "<", "=")
RANGE_FUNCTIONS = {"count_over_time", "rate", "bytes_over_time", "bytes_rate",
                   "quantile_over_time", "avg_over_time", "sum_over_time",
                   "min_over_time", "max_over_time"}
UNWRAPPED = {"quantile_over_time", "avg_over_time", "sum_over_time", "min_over_time",
             "max_over_time"}
AGGREGATIONS = {"sum", "count", "min", "max", "avg", "topk", "bottomk"}
_UNSUPPORTED_STAGES = {"line_format", "label_format", "pattern", "regexp", "unpack",
                       "decolorize", "keep", "distinct"}
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<duration>(?:[0-9]+(?:ms|s|m|h|d|w|y))+(?![A-Za-z0-9_]))
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>\|=|\|~|!=|!~|=~|==|>=|<=|[{}()\[\],|=<>+\-*/])
""", re.VERBOSE)


class LogQLError(ValueError):
    """A query that cannot be parsed or is not supported (400)."""


@dataclasses.dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # one of MATCH_OPS or COMPARE_OPS
    value: object  # str, or a float for numeric comparisons


@dataclasses.dataclass(frozen=True)
class LineFilter:
    op: str  # one of LINE_OPS
    text: str


@dataclasses.dataclass(frozen=True)
class LogQuery:
    matchers: tuple = ()
    line_filters: tuple = ()
    label_filters: tuple = ()  # Matchers after the selector (`| status >= 500`)
    json: bool = False
    unwrap: str = None


@dataclasses.dataclass(frozen=True)
class RangeAggregation:
    function: str
    logs: LogQuery
    range_ms: int
    parameter: float = None  # quantile_over_time's φ
    by: tuple = None  # `... [5m]) by (route)`: samples of a group together
    without: bool = False


@dataclasses.dataclass(frozen=True)
class VectorAggregation:
    operation: str
    inner: object
    by: tuple = None  # label names; None: no grouping clause
    without: bool = False
    parameter: float = None  # topk's k


@dataclasses.dataclass(frozen=True)
class Number:
    value: float
    vector: bool = False  # vector(n): a series without labels


@dataclasses.dataclass(frozen=True)
class Binary:
    op: str
    left: object
    right: object


def duration_ms(text, name="duration"):
    """A Prometheus-style duration (`5m`, `1h30m`, `60000ms`) in ms."""
    try:
        return parse_duration_ms(text)
    except ValueError:
        raise LogQLError(f"invalid {name} {text!r}: use a number and a unit, such as 5m") \
            from None


def parse(text):
    """The query `text` as a LogQuery or a metric expression."""
    parser = _Parser(text)
    if parser.peek() is None:
        raise LogQLError("the query is empty")
    result = parser.expression()
    if parser.peek() is not None:
        raise LogQLError(f"parse error at {parser.describe()}: unexpected input")
    return result


def is_logs(parsed):
    return isinstance(parsed, LogQuery)


class _Parser:
    def __init__(self, text):
        self.text, self.tokens, self.at = text, [], 0
        position = 0
        while position < len(text):
            found = _TOKEN.match(text, position)
            if found is None:
                raise LogQLError(f"parse error at position {position + 1}: "
                                 f"unexpected character {text[position]!r}")
            if found.lastgroup != "space":
                self.tokens.append((found.lastgroup, found.group(), position))
            position = found.end()

    def peek(self, offset=0):
        at = self.at + offset
        return self.tokens[at] if at < len(self.tokens) else None

    def describe(self):
        token = self.peek()
        return "the end of the query" if token is None else \
            f"position {token[2] + 1} ({token[1]!r})"

    def take(self, kind=None, value=None):
        token = self.peek()
        if token is None or (kind and token[0] != kind) or (value and token[1] != value):
            wanted = value or kind
            raise LogQLError(f"parse error at {self.describe()}: expected {wanted}")
        self.at += 1
        return token

    def accept(self, value):
        token = self.peek()
        if token is not None and token[0] in ("op", "name") and token[1] == value:
            self.at += 1
            return True
        return False

    # --- metric expressions ---------------------------------------------

    def expression(self):
        left = self.term()
        while True:
            token = self.peek()
            if token is None or token[1] not in ("+", "-", "*", "/"):
                return left
            self.at += 1
            left = Binary(token[1], left, self.term())
            if isinstance(left.left, LogQuery) or isinstance(left.right, LogQuery):
                raise LogQLError("a log query cannot be part of an arithmetic expression")

    def term(self):
        token = self.peek()
        if token is None:
            raise LogQLError("parse error at the end of the query: expected an expression")
        kind, value, _ = token
        if kind == "number":
            self.at += 1
            return Number(float(value))
        if kind == "op" and value == "{":
            return self.logs()
        if kind == "op" and value == "(":
            self.at += 1
            inner = self.expression()
            self.take("op", ")")
            return inner
        if kind == "op" and value == "-":
            self.at += 1
            return Binary("*", Number(-1.0), self.term())
        if kind == "name" and value == "vector":
            self.at += 1
            self.take("op", "(")
            number = self.take("number")
            self.take("op", ")")
            return Number(float(number[1]), vector=True)
        if kind == "name" and value in RANGE_FUNCTIONS:
            return self.range_aggregation()
        if kind == "name" and value in AGGREGATIONS:
            return self.vector_aggregation()
        if kind == "name":
            raise LogQLError(f"{value!r} is not supported: logsvc answers the functions "
                             f"{', '.join(sorted(RANGE_FUNCTIONS | AGGREGATIONS))} "
                             "and vector()")
        raise LogQLError(f"parse error at {self.describe()}: expected an expression")

    def range_aggregation(self):
        function = self.take("name")[1]
        self.take("op", "(")
        parameter = None
        if function == "quantile_over_time":
            parameter = float(self.take("number")[1])
            if not 0 <= parameter <= 1:
                raise LogQLError("quantile_over_time's quantile must lie between 0 and 1")
            self.take("op", ",")
        logs = self.logs()
        self.take("op", "[")
        token = self.take()
        range_ms = duration_ms(token[1], "range")
        self.take("op", "]")
        if self.peek() and self.peek()[1] == "offset":
            raise LogQLError("offset is not supported")
        # `{...}[5m] | unwrap x` is also LogQL: stages after the range.
        logs = self.stages(logs)
        self.take("op", ")")
        by, without = None, False
        if self.peek() and self.peek()[1] in ("by", "without"):
            by, without = self.grouping()
        if function in UNWRAPPED and logs.unwrap is None:
            raise LogQLError(f"{function} needs `| unwrap durationMs`")
        if function not in UNWRAPPED and logs.unwrap is not None:
            raise LogQLError(f"{function} takes no unwrap")
        if range_ms <= 0:
            raise LogQLError("the range must be positive")
        return RangeAggregation(function, logs, range_ms, parameter, by, without)

    def grouping(self):
        without = self.take("name")[1] == "without"
        self.take("op", "(")
        labels = []
        while not self.accept(")"):
            labels.append(self.take("name")[1])
            if not self.accept(","):
                self.take("op", ")")
                break
        return tuple(labels), without

    def vector_aggregation(self):
        operation = self.take("name")[1]
        by, without = None, False
        if self.peek() and self.peek()[1] in ("by", "without"):
            by, without = self.grouping()
        self.take("op", "(")
        parameter = None
        if operation in ("topk", "bottomk"):
            parameter = float(self.take("number")[1])
            if parameter < 1 or parameter != int(parameter):
                raise LogQLError(f"{operation} takes a whole number of series first")
            self.take("op", ",")
        inner = self.expression()
        self.take("op", ")")
        if by is None and self.peek() and self.peek()[1] in ("by", "without"):
            by, without = self.grouping()
        if isinstance(inner, LogQuery):
            raise LogQLError(f"{operation} needs a metric, such as count_over_time(... [5m])")
        return VectorAggregation(operation, inner, by, without, parameter)

    # --- log queries ------------------------------------------------------

    def logs(self):
        self.take("op", "{")
        matchers = []
        while not self.accept("}"):
            label = self.take("name")[1]
            op = self.take("op")[1]
            if op not in MATCH_OPS:
                raise LogQLError(f"parse error: {op!r} is not a label matcher "
                                 "(use =, !=, =~ or !~)")
            matchers.append(Matcher(label, op, self.string()))
            if not self.accept(","):
                self.take("op", "}")
                break
        return self.stages(LogQuery(matchers=tuple(matchers)))

    def string(self):
        kind, value, _ = self.take("string")
        if value.startswith("`"):
            return value[1:-1]
        return _unquote(value)

    def stages(self, query):
        lines, labels = list(query.line_filters), list(query.label_filters)
        json, unwrap = query.json, query.unwrap
        while True:
            token = self.peek()
            if token is None or token[0] != "op":
                break
            if token[1] in LINE_OPS:
                self.at += 1
                if labels or json:
                    raise LogQLError("line filters must come before parsers and label filters")
                lines.append(LineFilter(token[1], self.string()))
                continue
            if token[1] != "|":
                break
            self.at += 1
            name = self.take("name")[1]
            if name == "json":
                json = True
                if self.peek() and self.peek()[0] == "name" and self.peek(1) \
                        and self.peek(1)[1] == "=":
                    raise LogQLError("json with parameters is not supported: use | json")
            elif name == "logfmt":
                raise LogQLError("logfmt is not supported: logsvc's lines end in JSON; "
                                 "use | json")
            elif name == "drop":
                self.names_list()
            elif name == "unwrap":
                if self.peek() and self.peek()[1] in ("duration", "duration_seconds", "bytes"):
                    raise LogQLError("unwrap conversions are not supported: "
                                     "use | unwrap durationMs")
                unwrap = self.take("name")[1]
                if unwrap != "durationMs":
                    raise LogQLError("only durationMs can be unwrapped")
            elif name in _UNSUPPORTED_STAGES:
                raise LogQLError(f"| {name} is not supported")
            else:
                labels.append(self.label_filter(name))
        return LogQuery(tuple(query.matchers), tuple(lines), tuple(labels), json, unwrap)

    def names_list(self):
        while self.peek() and self.peek()[0] == "name":
            self.at += 1
            if self.accept("="):
                self.string()
            if not self.accept(","):
                return

    def label_filter(self, name):
        token = self.take("op")
        op = token[1]
        if op not in COMPARE_OPS:
            raise LogQLError(f"parse error at position {token[2] + 1}: "
                             f"{op!r} is not a comparison")
        following = self.peek()
        if following and following[0] == "string":
            if op not in ("=", "==", "!=", "=~", "!~"):
                raise LogQLError(f"{op} compares numbers, not strings")
            return Matcher(name, "=" if op == "==" else op, self.string())
        if following and following[0] in ("number", "duration"):
            self.at += 1
            value = following[1]
            number = float(value) if following[0] == "number" else duration_ms(value)
            if op in ("=~", "!~"):
                raise LogQLError(f"{op} takes a string")
            if self.peek() and self.peek()[1] in ("and", "or"):
                raise LogQLError("and/or in label filters are not supported: "
                                 "chain filters with |")
            return Matcher(name, "==" if op == "=" else op, number)
        raise LogQLError(f"parse error at {self.describe()}: expected a string or a number")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "/": "/", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v"}


def _unquote(text):
    out, at, body = [], 0, text[1:-1]
    while at < len(body):
        char = body[at]
        if char != "\\":
            out.append(char)
            at += 1
            continue
        code = body[at + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            at += 2
        elif code in "uU":
            width = 4 if code == "u" else 8
            try:
                out.append(chr(int(body[at + 2:at + 2 + width], 16)))
            except ValueError:
                raise LogQLError(f"invalid escape in {text}") from None
            at += 2 + width
        else:  # Go keeps `\.` in regular expressions as written
            out.append("\\" + code)
            at += 2
    return "".join(out)
