"""Latency counters that merge: a fixed log-scale bucket layout.

A duration d > 0 ms falls in bucket ceil(log(d) / log(GAMMA)) + OFFSET,
which holds the durations in (GAMMA^(i-1-OFFSET), GAMMA^(i-OFFSET)]. The
bucket's representative value 2·GAMMA^(i-OFFSET) / (GAMMA + 1) is within
(GAMMA - 1) / (GAMMA + 1) < 1 % of every duration in it, so a percentile
read from bucket counts is within 1 % of the exact one (the DDSketch
argument). Durations of 0 have bucket 0; durations below 0.001 ms count as
0.001 ms. Buckets run up to 1,271 (a day).

A sketch is a {bucket: count} dict; stored, a flat JSON array of bucket,
count pairs in bucket order (`[215, 3, 230, 1]`) in the `lat` column of
every counter row, beside
`lat_max`, the exact longest duration. Sketches add and subtract bucket by
bucket, so they follow inserts and retention exactly like the other
counters (see rollup.py). Each entry keeps its bucket (`entry.lat_bucket`)
so that counts over raw rows use the very same layout.

Percentiles are nearest-rank: p95 of n durations is the ceil(0.95·n)-th
smallest. The answer is the representative of the bucket holding that
rank, kept within the exact minimum and maximum: only the lowest and the
highest bucket's representative can lie outside them (every duration of
a bucket in between is above the minimum and below the maximum), so the
exact extremes are read only when an answer falls in one of those
(`extremes_needed`).
"""
import math
from bisect import bisect_left
from itertools import chain

import orjson

GAMMA = 1.02
OFFSET = 350
_LOG_GAMMA = math.log(GAMMA)
_FLOOR_MS = 0.001
PERCENTILES = (50, 90, 95, 99)


def bucket_of(duration_ms):
    if duration_ms is None:
        return None
    if duration_ms <= 0:
        return 0
    return max(1, math.ceil(math.log(max(duration_ms, _FLOOR_MS)) / _LOG_GAMMA) + OFFSET)


def value_of(bucket):
    """The representative duration of a bucket."""
    if bucket <= 0:
        return 0.0
    return 2 * GAMMA ** (bucket - OFFSET) / (GAMMA + 1)


def dumps(counts):
    """A sketch as stored: a JSON array of bucket, count pairs, flat and in
    bucket order (`[215, 3, 230, 1]`); None when empty. The counts of one
    batch all have one sign, so none is zero."""
    if not counts:
        return None
    if len(counts) == 1:  # most counter rows of a batch: one entry's bucket
        ((bucket, n),) = counts.items()
        return f"[{bucket},{n}]"
    return orjson.dumps(list(chain.from_iterable(sorted(counts.items())))).decode()


def loads(text):
    if not text:
        return {}
    flat = orjson.loads(text)
    return dict(zip(flat[::2], flat[1::2]))


def add(into, text, sign=1):
    """Add (sign -1: subtract) a stored sketch into the dict `into`."""
    if text:
        flat = orjson.loads(text)
        get = into.get
        for bucket, n in zip(flat[::2], flat[1::2]):
            into[bucket] = get(bucket, 0) + sign * n
    return into


def merged(texts):
    """Stored sketches added into one {bucket: count}."""
    if len(texts) == 1:
        return loads(texts[0])
    into = {}
    for text in texts:
        add(into, text)
    return into


def merge_stored(a, b):
    """Two stored sketches added (the SQLite function behind the upsert;
    PostgreSQL has the same as `logsvc_sketch_add`, see models.py)."""
    if not a:
        return b or None
    if not b:
        return a
    x, y = orjson.loads(a), orjson.loads(b)
    # Most often a batch's few buckets into a long stored sketch (an
    # all-time row): each found by bisection in the sorted pairs, no dict,
    # no sort (PostgreSQL's twin, models.py, does the same).
    buckets = x[::2]
    for at in range(0, len(y), 2):
        bucket, n = y[at], y[at + 1]
        if not n:
            continue
        i = bisect_left(buckets, bucket)
        if i < len(buckets) and buckets[i] == bucket:
            if x[2 * i + 1] + n:
                x[2 * i + 1] += n
            else:
                del x[2 * i:2 * i + 2], buckets[i]
        else:
            x[2 * i:2 * i] = (bucket, n)
            buckets.insert(i, bucket)
    return orjson.dumps(x).decode() if x else None


def percentiles(counts, ps, total=None, maximum=None, minimum=None):
    """{p: the nearest-rank p-th percentile} of a {bucket: count} sketch
    for each p of `ps`, in one walk over its buckets (None when empty),
    within the exact `minimum` and `maximum` when they are given (see
    extremes_needed for when they are needed)."""
    total = sum(counts.values()) if total is None else total
    if total <= 0:
        return dict.fromkeys(ps)
    ranks = sorted((max(1, math.ceil(p / 100 * total)), p) for p in ps)
    out, seen, at = {}, 0, 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        while at < len(ranks) and seen >= ranks[at][0]:
            value = value_of(bucket)
            if maximum is not None:
                value = min(value, maximum)
            if minimum is not None:
                value = max(value, minimum)
            out[ranks[at][1]] = _rounded(value)
            at += 1
        if at == len(ranks):
            break
    for _, p in ranks[at:]:  # counts that do not add up to `total`
        out[p] = _rounded(maximum) if maximum is not None else None
    return out


def extremes_needed(counts, ps, total=None):
    """(the lowest bucket, the highest) of a {bucket: count} sketch, each
    None unless a percentile of `ps` falls in it: only there can an answer
    lie outside the exact extremes, which are then worth reading."""
    total = sum(counts.values()) if total is None else total
    if total <= 0 or not counts:
        return None, None
    ranks = [max(1, math.ceil(p / 100 * total)) for p in ps]
    first, last = min(counts), max(counts)
    return (first if min(ranks) <= counts[first] else None,
            last if max(ranks) > total - counts[last] else None)


def summary(counts, maximum, ps=PERCENTILES, minimum=None):
    """{count, p50, p90, p95, p99, max} of a sketch and its exact maximum
    (percentiles within `minimum` too: see percentiles)."""
    total = sum(counts.values())
    out = {"count": total}
    out.update((f"p{p}", v) for p, v in percentiles(counts, ps, total, maximum, minimum).items())
    out["max"] = _whole(maximum) if total and maximum is not None else None
    return out


def _whole(value):
    return int(value) if float(value).is_integer() else value


def _rounded(value):
    """Milliseconds to the microsecond; whole numbers as ints."""
    return _whole(round(value, 3))
