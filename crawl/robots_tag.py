"""``X-Robots-Tag`` parsed the way its specification writes it (Google Search Central, "Robots meta
tag, data-nosnippet, and X-Robots-Tag specifications", adopted by Bing and the ``noai`` conventions).

Grammar, per header field (a response may carry several, and a proxy may have joined several into
one with commas — both read the same):

    value     = rule *( "," rule )
    rule      = [ agent ":" ] directive
    directive = name [ ":" argument ]          ; unavailable_after, max-snippet, max-image-preview …

An ``agent:`` prefix opens a group: it and every following rule without a prefix apply to that
crawler only, until the next prefix. Rules before any prefix apply to every crawler. So
``googlebot: noindex, webclip: noai`` tells webclip ``noai``, and ``noai, googlebot: noindex`` tells
everyone ``noai``. A token before ``:`` is an agent only if it is a product token (no spaces) and not
a directive that takes an argument (``max-snippet: 20`` is no agent named max-snippet; the date in
``unavailable_after: Sunday, 01-Sep-2030 15:00:00 GMT`` has a comma and colons, and its pieces parse
as unknown directives, which are ignored).

``none`` means ``noindex, nofollow``; ``all`` means no restriction. Names and agents are compared
without case. The agent is matched against the crawler's product token (``webclip`` in
``User-Agent: webclip/1.0 (+…)``); ``*`` names every crawler.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Directives whose value follows a colon: the token before that colon is not an agent.
VALUED = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
#: Shorthands the specification defines.
EXPANDS = {"none": ("noindex", "nofollow"), "all": ()}
_AGENT = re.compile(r"^[A-Za-z0-9._*-]+$")


def directives_for(values: Iterable[str], product_token: str) -> set[str]:
    """The directives (lower case, shorthands expanded) that ``values`` give ``product_token``."""
    token = product_token.strip().lower()
    found: set[str] = set()
    for value in values:
        agent: str | None = None  # each header field starts addressed to everyone
        for rule in value.split(","):
            rule = rule.strip()
            if not rule:
                continue
            head, sep, rest = rule.partition(":")
            head = head.strip().lower()
            if sep and _AGENT.match(head) and head not in VALUED:
                agent, rule = head, rest.strip()
                if not rule:  # "webclip:" alone opens a group whose rules follow
                    continue
            if agent is not None and agent not in (token, "*"):
                continue
            name = rule.split(":", 1)[0].strip().lower()
            found.update(EXPANDS.get(name, (name,)))
    return found


def disallowed(values: Iterable[str], product_token: str, refused: Iterable[str]) -> set[str]:
    """The directives in ``refused`` that ``values`` give ``product_token`` (empty: allowed)."""
    return directives_for(values, product_token) & {r.lower() for r in refused}
