"""The registrable domain of a URL's host: the unit of politeness.

``i.pinimg.com`` and ``s.pinimg.com`` are one site to its operator, so the download plan groups them
(:mod:`crawl.partition`) and the per-host cap and rate apply to them together. The registrable domain
is the public suffix plus one label (eTLD+1), from the Public Suffix List bundled with the
``publicsuffixlist`` package (ICANN and private sections, so ``a.blogspot.com`` and ``b.blogspot.com``
are two sites, as browsers treat them); no network is used. An IP literal is its own domain; a name
that is itself a public suffix, or has one label (``localhost``), is its own domain.
"""

from __future__ import annotations

import contextlib
import functools
import urllib.parse

from crawl.safety import literal_address


@functools.cache
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@functools.lru_cache(maxsize=1 << 16)
def registrable_domain(host: str) -> str:
    """eTLD+1 of ``host`` (lower case, no trailing dot); an IP literal or a bare suffix as it is."""
    host = host.strip().rstrip(".").lower()
    ip = literal_address(host)
    if ip is not None:
        return str(ip)
    if "." not in host:
        return host
    with contextlib.suppress(UnicodeError):
        host = host.encode("idna").decode("ascii")  # one spelling for IDNs (xn--…)
    return _psl().privatesuffix(host) or host


def url_domain(url: str) -> str:
    """:func:`registrable_domain` of the URL's host; ``""`` when it has none (a bad URL fails later)."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return ""
    return registrable_domain(host) if host else ""
