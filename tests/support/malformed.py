"""Untrusted input nested past every parser's limit, as a body, a JOSE segment or a value."""

from __future__ import annotations

import base64
import json

DEEP = "[" * 3000 + "]" * 3000          # past every parser's limit (json: RecursionError)
MIDDLE = '{"a":' * 300 + "1" + "}" * 300  # parses in orjson and json, re-encodes in neither


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


HEAD_OK = b64(json.dumps({"alg": "RS256", "typ": "JWT"}))
JWT_DEEP_HEADER = b64(DEEP) + "." + b64("{}") + ".AAAA"
JWT_DEEP_PAYLOAD = HEAD_OK + "." + b64(DEEP) + ".AAAA"
