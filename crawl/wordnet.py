"""Reads WordNet 3.0 synset head names straight from the dictionary's ``data.*`` files.

MetaCLIP's source is NLTK's ``ss.name().split(".")[0].replace("_", " ")`` over all synsets: the
first lemma of each synset, lower-cased, adjective markers such as ``(a)`` removed. This reads the
same thing from the ``data.noun/verb/adj/adv`` files (Debian ``wordnet-base`` puts them in
``/usr/share/wordnet``) without NLTK or its extra corpora. WordNet 3.0 gives 117,659 synsets and
about 86,500 distinct head names.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import ConfigError

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def check_wordnet_dir(wordnet_dir: str | Path, key: str = "vocab.wordnet_dir") -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``wordnet_dir`` holds the WordNet data files."""
    path = Path(wordnet_dir)
    missing = [f for f in DATA_FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(
            f"{key} = {str(path)!r}: not a WordNet dict directory (missing {', '.join(missing)}); install "
            "Debian's WordNet (`apt-get install -y wordnet-base`, files in /usr/share/wordnet) or point "
            f"{key} at a WordNet 3.0 `dict` folder, or remove 'wordnet' from vocab.sources"
        )


def synset_head_names(wordnet_dir: str | Path, key: str = "vocab.wordnet_dir") -> list[str]:
    """Distinct synset head names in file order (noun, verb, adj, adv), ``_`` replaced by a space.

    Raises :class:`ConfigError` naming ``key`` if the directory has no WordNet data files.
    """
    path = Path(wordnet_dir)
    check_wordnet_dir(path, key)
    seen: dict[str, None] = {}
    for name in DATA_FILES:
        with open(path / name, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # the licence header lines start with two spaces
                    continue
                fields = line.split(" ", 5)
                if len(fields) < 5:
                    continue
                lemma = _MARKER.sub("", fields[4]).lower().replace("_", " ")
                seen.setdefault(lemma, None)
    return list(seen)


def synset_count(wordnet_dir: str | Path) -> int:
    """Number of synsets (data lines) in the dictionary."""
    path = Path(wordnet_dir)
    check_wordnet_dir(path, "vocab.wordnet_dir")
    n = 0
    for name in DATA_FILES:
        with open(path / name, encoding="utf-8") as fh:
            n += sum(1 for line in fh if not line.startswith("  "))
    return n
