"""Keeping secrets out of everything DeepSalt writes or prints: run records, commit metadata, logs.

Storage options and URLs may carry credentials (``key``/``secret``/``token`` options, ``user:pass@`` in a
URL, ``?token=...`` or pre-signed query strings). What we persist is always passed through :func:`redact`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "<redacted>"
_SECRET_NAME = re.compile(r"(^key$|secret|token|passw|credential|signature|access_key|session|^sig$|^auth)", re.I)


def redact_url(url: str) -> str:
    """``url`` without user info and with the values of secret-looking query parameters masked."""
    if "://" not in url:
        return url
    p = urlsplit(url)
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    if p.username or p.password:
        netloc = f"{MASK}@{netloc}"
    query = p.query
    if query:
        query = urlencode([(k, MASK if _SECRET_NAME.search(k) or k.lower().startswith("x-amz-") else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe="<>")
    return urlunsplit((p.scheme, netloc, p.path, query, p.fragment))


def redact(obj):
    """A copy of ``obj`` (dicts, lists, strings) with secret-named values masked and URLs cleaned."""
    if isinstance(obj, dict):
        return {k: MASK if isinstance(k, str) and _SECRET_NAME.search(k) and v not in (None, "", {}) else redact(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_url(obj)
    return obj
