"""The client's address behind reverse proxies: X-Forwarded-For only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ADDRESS = 64


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks (GATEWAY_TRUSTED_PROXIES) as networks."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str, trusted: Sequence[Network]) -> str:
    """The address to hold a client to: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read from the right (each proxy appends the
    address it was called from) and the first hop that is not a trusted proxy is the client;
    anything further left was written by the client and is never believed.
    """
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, trusted):
        return address[:MAX_ADDRESS]
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop[:MAX_ADDRESS]
    return (hops[0] if hops else address)[:MAX_ADDRESS]


__all__ = ["client_address", "parse_networks"]
