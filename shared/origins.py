"""Where a URI leads: its origin (RFC 6454), loopback hosts, the OP's own paths.

Several questions look alike and have different answers on purpose. Use which when:

  question                                  function             compares
  ----------------------------------------  -------------------  ---------------------------
  same origin as the issuer or a registered origin_of            scheme://authority as
  origin? (implicit clients, a web client's                      written, lowercased: nothing
  default `origins`, CSP form-action)                            folded, nothing widened

  which string does a browser write for it? serialized_origin    RFC 6454 §6.1: IDNA, default
  (`session_state`, hashed like the check-                       port dropped, loopback names
  session iframe's `event.origin`)                               NOT folded

  could it reach that origin, however       normal_origin,       every spelling a browser
  spelled? (registrations into the OP)      may_reach_origin,    takes folded to one (percent,
                                            into_op              IPv4 forms, any loopback
                                                                 name); fails closed

  is the path one of the OP's endpoints?    is_op_path           decoded, dot segments
                                                                 resolved; fails closed

  is the host loopback? (RFC 8252 native    is_loopback_host     `localhost` or a loopback IP
  redirect URIs, an http issuer)                                 literal only

  did the request come from our own pages?  same_origin          scheme, host and port as
  (Origin or Referer against the issuer)                         serialized_origin; none,
                                                                 `null` or unparsable: no
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional
from urllib.parse import unquote, urlsplit

from .topology import EXACT_ROUTES, PREFIX_ROUTES

_DEFAULT_PORTS = {"http": 80, "https": 443}
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_NOT_IN_HOST = re.compile(r"[\x00-\x20/\\@?#%\[\]<>^|]")


def origin_of(uri: str) -> str:
    """`scheme://authority` of `uri`, lowercased, as written (no port or host folding)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(source: str, origin: str) -> bool:
    """Whether the URL `source` (an `Origin` header, else a `Referer`) is of the origin of
    `origin` (the issuer): scheme, host and port, each compared as a browser serialises
    them (`serialized_origin`, RFC 6454 §5, §6.1). The check of the forms and scripts of
    our own pages (OWASP CSRF: verifying the origin with standard headers): an http page
    of the issuer's host, another port or a subdomain is another origin. Empty, `null`
    (an opaque origin), a URL without a host or with a malformed port never matches."""
    parts = urlsplit(source or "")
    if not parts.scheme or not parts.hostname or not origin:
        return False
    try:
        parts.port
    except ValueError:
        return False
    return serialized_origin(source) == serialized_origin(origin)


def is_loopback_host(host: Optional[str]) -> bool:
    """localhost or a loopback IP address (RFC 8252 §7.3)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ipv4_part(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    return int(part, 8) if len(part) > 1 and part[0] == "0" else int(part)  # "09": ValueError


def serialized_origin(uri: str) -> str:
    """The origin of `uri` as a browser serialises it (RFC 6454 §6.1, §4; WHATWG URL): the
    check-session iframe hashes the RP's `event.origin` (OIDC Session Management 1.0 §3,
    §4.2), so `session_state` must hash the same string. Scheme and host lowercased, a
    non-ASCII host IDNA-encoded, IPv6 in brackets, the scheme's default port dropped.
    Loopback names are NOT folded (`localhost` and `127.0.0.1` are different origins to
    the browser), nor is a trailing dot removed."""
    parts = urlsplit(uri)
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if not parts.netloc:
        return f"{scheme}:"
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # registration would not take such a host; hash it as written
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def normal_origin(uri: str) -> Optional[str]:
    """`uri`'s origin as a browser reaches it (RFC 6454 §4; WHATWG URL host parsing), or
    None when it cannot be worked out: scheme lowercased; host percent-decoded (RFC 3986
    §3.2.2), lowercased, IDNA-encoded, without userinfo or a trailing dot; IPv4 also from
    the short, hex and octal forms browsers accept; every loopback or unspecified address
    and `*.localhost` (RFC 6761 §6.3) as `localhost` (RFC 8252 §8.3: all of them reach this
    machine); the port an integer, the scheme's default filled in (RFC 3986 §6.2.3)."""
    try:
        parts = urlsplit(uri)
        scheme, port, host = parts.scheme.lower(), parts.port, parts.hostname or ""
        if not parts.netloc:  # no authority (a private-use scheme): an origin of its own
            return f"{scheme}:"
        for _ in range(4):
            decoded = unquote(host, errors="strict")
            if decoded == host:
                break
            host = decoded
        else:
            return None
        host = host.lower().rstrip(".")
        if not host or _NOT_IN_HOST.search(host):
            return None
        labels = host.split(".")
        if ":" in host:  # an IPv6 literal (urlsplit took off the brackets)
            address = ipaddress.IPv6Address(host)
        elif _IPV4_PART.fullmatch(labels[-1]):  # WHATWG: a host ending in a number is IPv4
            if len(labels) > 4 or not all(_IPV4_PART.fullmatch(n) for n in labels):
                return None
            numbers = [_ipv4_part(n) for n in labels]
            if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
                return None
            address = ipaddress.IPv4Address(
                numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1])))
        else:
            address, host = None, host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return None
    if address is not None:
        mapped = getattr(address, "ipv4_mapped", None) or address
        host = "localhost" if mapped.is_loopback or mapped.is_unspecified else \
            (f"[{address.compressed}]" if address.version == 6 else str(address))
    elif host.endswith(".localhost"):
        host = "localhost"
    port = port if port is not None else _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def may_reach_origin(uri: str, origin: str) -> bool:
    """Whether `uri` may lead to `origin` (both as `normal_origin`). Fails closed: a URI
    whose origin cannot be worked out counts as reaching it (for refusals only)."""
    mine, theirs = normal_origin(uri), normal_origin(origin)
    return mine is None or mine == theirs


# Paths the OP itself serves (shared/topology.py routes them): clients must not redirect
# into them (`ClientRegistry.lookup`, dynamic registration).
OP_PATHS = tuple(sorted({"/signin/v1", "/konnect/v1", "/.well-known",
                         *(p.rstrip("/") for paths in EXACT_ROUTES.values() for p in paths),
                         *(p.rstrip("/") for paths in PREFIX_ROUTES.values() for p in paths)}))


def is_op_path(uri: str) -> bool:
    """True if `uri`'s path is, or may reach, one of the OP's own endpoints (`OP_PATHS`),
    wherever it starts (an issuer with a path prefix). Compared as a browser or proxy may
    see it: percent-decoding repeated, dot segments resolved (RFC 3986 §5.2.4), empty
    segments dropped, case folded; a path that does not settle counts as the OP's."""
    path = urlsplit(uri).path
    for _ in range(4):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        return True
    segments: list[str] = []
    for segment in path.replace("\\", "/").split("/"):
        if segment == "..":
            segments = segments[:-1]
        elif segment not in ("", "."):
            segments.append(segment)
    normalised = ("/" + "/".join(segments) + "/").lower()
    return any(op + "/" in normalised for op in OP_PATHS)


def into_op(uri: str, issuer: str) -> bool:
    """A URI on the issuer's origin, however it is spelled (`normal_origin`), whose path is
    or reaches one of the OP's endpoints (`is_op_path`)."""
    return bool(issuer) and is_op_path(uri) and may_reach_origin(uri, issuer)
