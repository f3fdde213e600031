"""Who is asking: a key for the client that the client cannot mint.

Gradio's session hash is chosen by the client (a new one per request costs nothing), so every limit
that protects other visitors is keyed on the network address instead: the peer of the TCP
connection, or, behind ``N`` trusted proxies (``HALVIZ_TRUSTED_PROXIES=N``; 1 on Hugging Face
Spaces), the address the outermost trusted proxy saw, which is the ``N``-th entry of
``X-Forwarded-For`` counted from the right (each proxy appends the peer it saw; entries further left
come from the client and are not believed). Unset or 0: forwarded headers are ignored.

IPv6 addresses are keyed by their /64 network (one subscriber usually holds a whole /64); an
IPv4-mapped IPv6 address is its IPv4 address. Nothing here imports Gradio.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping

TRUSTED_PROXIES_ENV = "HALVIZ_TRUSTED_PROXIES"
MAX_TRUSTED_PROXIES = 8
UNKNOWN = "unknown"

log = logging.getLogger("halviz.ui")


def trusted_proxies_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """``$HALVIZ_TRUSTED_PROXIES`` as a whole number from 0 to 8; unset or unreadable: 0."""
    raw = environ.get(TRUSTED_PROXIES_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        log.warning("%s=%r is not a whole number; forwarded addresses are ignored", TRUSTED_PROXIES_ENV, raw)
        return 0
    return min(max(value, 0), MAX_TRUSTED_PROXIES)


def address_key(text: str | None) -> str | None:
    """The key of one address as written in a header or by the server (a port, brackets and an IPv6
    zone are dropped); None when it is not an IP address."""
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # "203.0.113.7:5678"
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def forwarded_chain(values: Iterable[str]) -> list[str]:
    """The entries of every ``X-Forwarded-For`` header, in order (several headers read as one list)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def client_key(peer: str | None, forwarded_for: Iterable[str] = (), trusted_proxies: int = 0) -> str:
    """The client's key: ``peer`` (the connection's address) unless ``trusted_proxies`` > 0, then the
    ``trusted_proxies``-th ``X-Forwarded-For`` entry from the right. A chain shorter than that (the
    request did not come through every trusted proxy) or an entry that is not an address falls back
    to the peer, so a client that reaches the server directly cannot choose its key."""
    own = address_key(peer) or (peer.strip()[:64] if peer and peer.strip() else UNKNOWN)
    if trusted_proxies <= 0:
        return own
    chain = forwarded_chain(forwarded_for)
    if len(chain) < trusted_proxies:
        return own
    return address_key(chain[-trusted_proxies]) or own
