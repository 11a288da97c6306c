"""Which host names and addresses are this machine's own: the one test for a server's bind (serving
beyond loopback needs auth) and for a request's Host header (DNS rebinding)."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost", "localhost.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, or an address with or without IPv6 brackets; no port) is loopback:
    ``localhost`` and ``*.localhost`` (RFC 6761), 127.0.0.0/8, ``::1``."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith((".localhost", ".localhost.")):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
