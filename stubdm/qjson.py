# JSON for QMP (RFC 8259), strict as QEMU's parser and the same on every
# runtime: the stub domain's MicroPython port has no json module, and the
# unix port's json.loads skips missing commas and colons. loads() takes bytes
# and raises ValueError for anything that is not exactly one JSON text; its
# nesting is bounded (QMP requests are a few levels deep). dumps() writes what
# replies hold: dicts, lists, str, int, bool, None (and float where the
# runtime has it).
from stubdm.compat import const

MAX_DEPTH = const(32)

_WS = b" \t\r\n"
_HEX = b"0123456789abcdefABCDEF"
_SIMPLE = {0x22: '"', 0x5C: "\\", 0x2F: "/", 0x62: "\b", 0x66: "\f", 0x6E: "\n",
           0x72: "\r", 0x74: "\t"}


def _ws(b, i):
    n = len(b)
    while i < n and b[i] in _WS:
        i += 1
    return i


def _string(b, i):
    """b[i] is the opening quote: (the string, the index after the closing one)."""
    n = len(b)
    i += 1
    start = i
    parts = []
    while i < n:
        c = b[i]
        if c == 0x22:
            parts.append(bytes(b[start:i]).decode())
            return "".join(parts), i + 1
        if c < 0x20:
            raise ValueError("control character in a string")
        if c == 0x5C:
            parts.append(bytes(b[start:i]).decode())
            i += 1
            if i >= n:
                break
            e = b[i]
            if e == 0x75:  # \uXXXX
                h = bytes(b[i + 1:i + 5])
                if len(h) != 4 or [x for x in h if x not in _HEX]:
                    raise ValueError("bad \\u escape")
                code = int(h, 16)
                try:
                    parts.append(chr(code))
                except ValueError:  # a runtime without unicode strings, or a surrogate
                    parts.append("?")
                i += 4
            elif e in _SIMPLE:
                parts.append(_SIMPLE[e])
            else:
                raise ValueError("bad escape")
            start = i + 1
        i += 1
    raise ValueError("unterminated string")


def _digits(b, i):
    n = len(b)
    d = i
    while i < n and 0x30 <= b[i] <= 0x39:
        i += 1
    return i, i - d


def _number(b, i):
    n = len(b)
    s = i
    is_int = True
    if i < n and b[i] == 0x2D:
        i += 1
    if i < n and b[i] == 0x30:
        i += 1
    elif i < n and 0x31 <= b[i] <= 0x39:
        i, _ = _digits(b, i)
    else:
        raise ValueError("bad number")
    if i < n and b[i] == 0x2E:
        is_int = False
        i, k = _digits(b, i + 1)
        if not k:
            raise ValueError("bad fraction")
    if i < n and b[i] in b"eE":
        is_int = False
        i += 1
        if i < n and b[i] in b"+-":
            i += 1
        i, k = _digits(b, i)
        if not k:
            raise ValueError("bad exponent")
    if i - s > 64:
        raise ValueError("number too long")
    text = bytes(b[s:i])
    if is_int:
        return int(text), i
    try:
        return float(text), i
    except Exception:  # a runtime without floats: QMP's requests carry none
        raise ValueError("no floats here")


def _value(b, i, depth):
    i = _ws(b, i)
    if i >= len(b):
        raise ValueError("value expected")
    c = b[i]
    if c == 0x22:
        return _string(b, i)
    if c == 0x7B or c == 0x5B:
        if depth >= MAX_DEPTH:
            raise ValueError("nesting too deep")
        is_obj = c == 0x7B
        close = 0x7D if is_obj else 0x5D
        out = {} if is_obj else []
        i = _ws(b, i + 1)
        if i < len(b) and b[i] == close:
            return out, i + 1
        while True:
            if is_obj:
                i = _ws(b, i)
                if i >= len(b) or b[i] != 0x22:
                    raise ValueError("member name expected")
                key, i = _string(b, i)
                i = _ws(b, i)
                if i >= len(b) or b[i] != 0x3A:
                    raise ValueError("':' expected")
                v, i = _value(b, i + 1, depth + 1)
                out[key] = v
            else:
                v, i = _value(b, i, depth + 1)
                out.append(v)
            i = _ws(b, i)
            if i < len(b) and b[i] == 0x2C:
                i += 1
                continue
            if i < len(b) and b[i] == close:
                return out, i + 1
            raise ValueError("',' or end expected")
    for word, v in ((b"true", True), (b"false", False), (b"null", None)):
        if bytes(b[i:i + len(word)]) == word:
            return v, i + len(word)
    return _number(b, i)


def loads(b):
    """The value of the one JSON text in b (bytes); ValueError if b is not one."""
    try:
        v, i = _value(b, 0, 0)
    except UnicodeError:
        raise ValueError("not UTF-8")
    except IndexError:
        raise ValueError("truncated")
    if _ws(b, i) != len(b):
        raise ValueError("trailing characters")
    return v


def _quote(s):
    out = ['"']
    start = 0
    for i in range(len(s)):
        c = s[i]
        if c == '"' or c == "\\" or c < " ":
            out.append(s[start:i])
            if c == '"' or c == "\\":
                out.append("\\" + c)
            else:
                out.append("\\u%04x" % ord(c))
            start = i + 1
    out.append(s[start:])
    out.append('"')
    return "".join(out)


def dumps(v, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{" + ", ".join([_quote(str(k)) + ": " + dumps(v[k], depth + 1)
                                for k in v]) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join([dumps(x, depth + 1) for x in v]) + "]"
    if isinstance(v, float):
        return repr(v)
    raise ValueError("can't write %s as JSON" % type(v).__name__)
