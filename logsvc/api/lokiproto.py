"""Loki's push request in protobuf, snappy-compressed: what Promtail, Grafana
Alloy and Vector's `loki` sink send by default.

The messages are Loki's `logproto.PushRequest` (push.proto): streams, each
with its labels in Prometheus' text form (`{job="nginx", level="warn"}`) and
its entries (a google.protobuf.Timestamp, the line, structured metadata as
name/value pairs). They are described here with protobuf's own descriptor
types, so that the protobuf library decodes them; the body is snappy's
block format (cramjam).
"""
import functools
import re

from .shipped import parsed

_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t"}
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@functools.cache
def _push_request():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="logsvc_loki_push.proto", package="logproto", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"])
    types = descriptor_pb2.FieldDescriptorProto
    optional, repeated = types.LABEL_OPTIONAL, types.LABEL_REPEATED

    def message(name, *fields):
        described = file.message_type.add(name=name)
        for number, (field, kind, label, type_name) in enumerate(fields, start=1):
            added = described.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    message("LabelPairAdapter", ("name", types.TYPE_STRING, optional, None),
            ("value", types.TYPE_STRING, optional, None))
    message("EntryAdapter",
            ("timestamp", types.TYPE_MESSAGE, optional, ".google.protobuf.Timestamp"),
            ("line", types.TYPE_STRING, optional, None),
            ("structuredMetadata", types.TYPE_MESSAGE, repeated, ".logproto.LabelPairAdapter"))
    message("StreamAdapter", ("labels", types.TYPE_STRING, optional, None),
            ("entries", types.TYPE_MESSAGE, repeated, ".logproto.EntryAdapter"),
            ("hash", types.TYPE_UINT64, optional, None))
    message("PushRequest",
            ("streams", types.TYPE_MESSAGE, repeated, ".logproto.StreamAdapter"))
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))


def labels_of(text):
    """{name: value} of Prometheus' label text `{a="1", b="x\\"y"}`."""
    inner = text.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    out, at = {}, 0
    while at < len(inner):
        found = _LABEL.match(inner, at)
        if found is None:
            if inner[at:].strip():
                raise ValueError(f"labels {text[:80]!r} are not in Prometheus' form")
            break
        out[found[1]] = _ESCAPE.sub(lambda m: _ESCAPES.get(m[1], m[1]), found[2])
        at = found.end()
    return out


def push_request_json(body, max_bytes):
    """A snappy protobuf push request as the JSON push body (shipped.loki_entries)."""
    import cramjam

    try:
        if cramjam.snappy.decompress_raw_len(body) > max_bytes:
            raise ValueError(f"the push request is larger than {max_bytes} bytes uncompressed")
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise ValueError("the body is not snappy-compressed (block format)") from exc
    request = parsed(_push_request(), raw)
    streams = []
    for stream in request.streams:
        values = []
        for entry in stream.entries:
            nanos = entry.timestamp.seconds * 1_000_000_000 + entry.timestamp.nanos
            metadata = {pair.name: pair.value for pair in entry.structuredMetadata}
            values.append([str(nanos), entry.line, metadata] if metadata
                          else [str(nanos), entry.line])
        streams.append({"stream": labels_of(stream.labels), "values": values})
    return {"streams": streams}


def encode_push_request(streams):
    """The snappy protobuf body of a JSON push body (for tests and benchmarks)."""
    import cramjam

    request = _push_request()()
    for stream in streams["streams"]:
        added = request.streams.add()
        added.labels = "{" + ", ".join(
            f'{k}="{_quoted(v)}"' for k, v in stream["stream"].items()) + "}"
        for value in stream["values"]:
            entry = added.entries.add()
            nanos = int(value[0])
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(nanos, 1_000_000_000)
            entry.line = value[1]
            for name, text in (value[2] if len(value) > 2 else {}).items():
                entry.structuredMetadata.add(name=name, value=text)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def _quoted(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
