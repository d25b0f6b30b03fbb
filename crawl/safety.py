"""Which network addresses the crawler may connect to.

Refused, unless an explicit allow-list admits them (tests and the demo admit their loopback server):

* every range of the IANA IPv4 and IPv6 Special-Purpose Address Registries (as of 2025), whether or not
  the registry marks it globally reachable: an image crawler has no business with AS112 servers,
  anycast relays or documentation ranges, and refusing them all is simpler to audit;
* IPv4 multicast and broadcast, IPv6 multicast, the deprecated IPv6 site-local ``fec0::/10``, and
  anything outside ``2000::/3`` (the only IPv6 block allocated for global unicast);
* addresses that *embed* an IPv4 address are judged by it as well: IPv4-mapped (``::ffff:a.b.c.d``,
  which a dual-stack socket connects to as ``a.b.c.d``), the NAT64 well-known prefix
  ``64:ff9b::/96`` (allowed only when the embedded address is public, since an IPv6-only node reaches
  the public IPv4 web through it), 6to4 ``2002::/16`` and Teredo ``2001::/32`` (always refused, and
  the reason names the embedded address, e.g. ``2002:7f00:2::`` carries 127.0.0.2).

The check runs on every address a host resolves to and again on the address a socket actually
connected to, for every redirect hop (see :mod:`crawl.fetch`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolver(host, port) -> addresses``: the name lookup :meth:`AddressPolicy.resolve` uses.
Resolver = Callable[[str, int], list[str]]

# (network, reason). Order matters only for the reason reported: the most specific entries come first.
_V4: list[tuple[str, str]] = [
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this_network"),  # RFC 791
    ("10.0.0.0/8", "private"),  # RFC 1918
    ("100.64.0.0/10", "shared_address_space"),  # RFC 6598 (carrier-grade NAT)
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "ietf_protocol_assignment"),  # RFC 6890, incl. .0/29, .8, .9, .10, .170, .171
    ("192.0.2.0/24", "documentation"),  # TEST-NET-1
    ("192.31.196.0/24", "as112"),  # RFC 7535
    ("192.52.193.0/24", "amt"),  # RFC 7450
    ("192.88.99.0/24", "6to4_relay_anycast"),  # RFC 7526 (deprecated)
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "as112"),  # RFC 7534 direct delegation
    ("198.18.0.0/15", "benchmarking"),  # RFC 2544
    ("198.51.100.0/24", "documentation"),  # TEST-NET-2
    ("203.0.113.0/24", "documentation"),  # TEST-NET-3
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),  # RFC 1112
]
_V6: list[tuple[str, str]] = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "ipv4_compatible"),  # deprecated (RFC 4291), before ::ffff:0:0/96 is handled
    ("64:ff9b:1::/48", "nat64_local_use"),  # RFC 8215
    ("100::/64", "discard_only"),  # RFC 6666
    ("100:0:0:1::/64", "dummy_prefix"),  # RFC 9780
    ("2001:1::1/128", "pcp_anycast"),  # RFC 7723
    ("2001:1::2/128", "turn_anycast"),  # RFC 8155
    ("2001:1::3/128", "dns_sd_srp_anycast"),  # RFC 9665
    ("2001:2::/48", "benchmarking"),  # RFC 5180
    ("2001:3::/32", "amt"),  # RFC 7450
    ("2001:4:112::/48", "as112"),  # RFC 7535
    ("2001:10::/28", "orchid"),  # RFC 4843 (deprecated)
    ("2001:20::/28", "orchid_v2"),  # RFC 7343
    ("2001:30::/28", "drone_remote_id"),  # RFC 9374
    ("2001::/23", "ietf_protocol_assignment"),  # RFC 2928 (after its more specific entries)
    ("2001:db8::/32", "documentation"),  # RFC 3849
    ("2620:4f:8000::/48", "as112"),  # RFC 7534
    ("3fff::/20", "documentation"),  # RFC 9637
    ("5f00::/16", "srv6_sids"),  # RFC 9602
    ("fc00::/7", "unique_local"),  # RFC 4193
    ("fe80::/10", "link_local"),
    ("fec0::/10", "site_local"),  # RFC 3879 (deprecated, not in the registry but never public)
    ("ff00::/8", "multicast"),
]
_V4_NETS = [(ipaddress.IPv4Network(n), why) for n, why in _V4]
_V6_NETS = [(ipaddress.IPv6Network(n), why) for n, why in _V6]
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64_WKP = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")


class RefusedAddress(Exception):
    """The URL's host resolves to an address the crawler must not contact."""


def special_purpose(ip: IPAddress) -> str | None:
    """Why ``ip`` is not an ordinary public unicast address, or None if it is one."""
    if isinstance(ip, ipaddress.IPv4Address):
        for net, why in _V4_NETS:
            if ip in net:
                return why
        return None
    if ip.ipv4_mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1 to a dual-stack socket
        return special_purpose(ip.ipv4_mapped)
    if ip in _NAT64_WKP:  # 64:ff9b::a.b.c.d reaches a.b.c.d through the network's NAT64
        inner = special_purpose(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return f"nat64 of {ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)} ({inner})" if inner else None
    if ip in _SIX_TO_FOUR:  # 2002:AABB:CCDD::/48 tunnels to AA.BB.CC.DD
        inner4 = ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
        return f"6to4 of {inner4} ({special_purpose(inner4) or 'public'})"
    if ip in _TEREDO:  # the client's address is the last 32 bits, inverted
        client = ipaddress.IPv4Address(~int(ip) & 0xFFFFFFFF)
        return f"teredo of {client} ({special_purpose(client) or 'public'})"
    for net, why in _V6_NETS:
        if ip in net:
            return why
    if ip not in _GLOBAL_UNICAST_V6:
        return "reserved"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The IP address ``host`` spells literally (``[::1]`` brackets stripped, zone ids dropped), or None."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives ``host`` (each once, in its order)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class AddressPolicy:
    """Decides whether an IP address may be contacted; picklable, cheap to build."""

    def __init__(self, allow: Iterable[str] = ()):
        self.allow = tuple(ipaddress.ip_network(a, strict=False) for a in allow)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused (``"loopback"``, ``"private"``…), or None if it may be contacted."""
        ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if any(plain in net for net in self.allow) or any(ip in net for net in self.allow):
            return None
        return special_purpose(ip)

    def check(self, host: str, addresses: list[str]) -> list[str]:
        """Return ``addresses`` if every one may be contacted; raise :class:`RefusedAddress` otherwise.

        All addresses must pass: a name that resolves to one public and one private address is a
        classic way to reach internal services, so it is refused as a whole.
        """
        if not addresses:
            raise RefusedAddress(f"{host} resolves to no address")
        for addr in addresses:
            why = self.refusal(addr)
            if why:
                raise RefusedAddress(f"{host} resolves to {addr} ({why})")
        return addresses

    def resolve(self, host: str, port: int, resolver: Resolver = system_resolver) -> list[str]:
        """Resolve ``host`` (no time limit: :mod:`crawl.fetch` bounds it) and check every address."""
        return self.check(host, resolver(host, port))
