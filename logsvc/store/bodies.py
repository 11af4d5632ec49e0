"""How bodies are stored: long ones compressed, short ones as text."""
import zlib

# Bodies shorter than this gain too little from compression to pay for it.
BODY_COMPRESS_FROM = 128
# zlib level 6: bench/scale.py's bodies shrink to 34 % of their size (level 1:
# 35 %, zstd level 3: 35 %, zstd with a trained dictionary: 20 %, at the cost
# of keeping dictionaries in step across processes).
BODY_ZLIB_LEVEL = 6


def pack_body(text):
    """(text, compressed) columns for a body (either may be None)."""
    if text is None or len(text) < BODY_COMPRESS_FROM:
        return text, None
    raw = text.encode()
    packed = zlib.compress(raw, BODY_ZLIB_LEVEL)
    if len(packed) >= len(raw):
        return text, None
    return None, packed


def unpack_body(text, packed):
    if packed is None:
        return text
    return zlib.decompress(packed).decode()
