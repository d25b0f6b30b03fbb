"""Which network addresses the crawler may connect to.

Public unicast addresses are allowed; private, loopback, link-local, multicast, reserved and
unspecified ones are refused unless they fall in an explicit allow-list (tests and the demo allow
their loopback server only). The check runs on every address a host resolves to and again on the
address a socket actually connected to, for every redirect hop (see :mod:`crawl.fetch`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(Exception):
    """The URL's host resolves to an address the crawler must not contact."""


class AddressPolicy:
    """Decides whether an IP address may be contacted; picklable, cheap to build."""

    def __init__(self, allow: Iterable[str] = ()):
        self.allow = tuple(ipaddress.ip_network(a, strict=False) for a in allow)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused (``"loopback"``, ``"private"``…), or None if it may be contacted."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if any(ip in net for net in self.allow):
            return None
        for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
            if getattr(ip, f"is_{kind}"):
                return kind
        if not ip.is_global:  # shared address space (100.64/10) and other non-global ranges
            return "not_global"
        return None

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its addresses; raise :class:`RefusedAddress` if any is refused.

        All addresses must pass: a name that resolves to one public and one private address is a
        classic way to reach internal services, so it is refused as a whole.
        """
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for addr in addresses:
            why = self.refusal(addr.split("%", 1)[0])
            if why:
                raise RefusedAddress(f"{host} resolves to {addr} ({why})")
        return addresses
