"""CLIP's tokenizer: lower-cased byte-level BPE with ``</w>`` word ends, 77-token context, SOT/EOT.

Built on the ``tokenizers`` library with the pipeline of OpenAI's ``simple_tokenizer.py``: text
cleaned with ftfy, HTML-unescaped and whitespace-collapsed, lower-cased, split with CLIP's regex,
mapped byte-to-unicode, then BPE. The vocabulary has OpenAI's layout: the 256 byte symbols, the same
with ``</w>``, one token per merge in merge order, then ``<|startoftext|>`` and ``<|endoftext|>`` as
the two last ids (the model pools text at the highest id, the end-of-text token).
"""

from __future__ import annotations

import gzip
import html
import json
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch
from tokenizers import Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
WORD_END = "</w>"
# CLIP's pre-tokenisation regex (simple_tokenizer.py), minus the special tokens handled separately.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
TOKENIZER_FILE = "tokenizer.json"
_WS = regex.compile(r"\s+")


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clean_text(text: str) -> str:
    """ftfy repair, double HTML unescape, whitespace collapse, strip, lower-case (CLIP's cleaning)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WS.sub(" ", text).strip().lower()


def _base_vocab() -> list[str]:
    chars = list(bytes_to_unicode().values())
    return chars + [c + WORD_END for c in chars]


def _build_hf(merges: list[tuple[str, str]]) -> HFTokenizer:
    """A ``tokenizers`` object with OpenAI's vocabulary layout for ``merges`` (in priority order)."""
    vocab_list = _base_vocab()
    seen = set(vocab_list)
    kept: list[tuple[str, str]] = []
    for a, b in merges:
        if a + b in seen:  # a merge that re-creates an existing symbol adds nothing
            continue
        seen.add(a + b)
        vocab_list.append(a + b)
        kept.append((a, b))
    vocab_list += [SOT, EOT]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    hf = HFTokenizer(
        BPE(
            vocab=vocab,
            merges=kept,
            continuing_subword_prefix="",
            end_of_word_suffix=WORD_END,
            fuse_unk=False,
        )
    )
    hf.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([SOT, EOT])
    return hf


class Tokenizer:
    """Text -> ``LongTensor[B, context_length]`` with SOT, EOT and zero padding.

    Long texts are truncated so that the last position still holds EOT (where the model pools).
    """

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.sot_id = hf.token_to_id(SOT)
        self.eot_id = hf.token_to_id(EOT)
        if self.sot_id is None or self.eot_id is None:
            raise ValueError(
                f"tokenizer has no {SOT} / {EOT} special tokens; build it with train_tokenizer()"
            )
        if self.eot_id != hf.get_vocab_size() - 1:
            raise ValueError("the end-of-text token must be the last id (the model pools at the highest id)")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """BPE ids of one cleaned text, without SOT/EOT."""
        return self.hf.encode(clean_text(text), add_special_tokens=False).ids

    def __call__(self, texts: str | list[str], context_length: int = 77) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        encs = self.hf.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, enc in enumerate(encs):
            ids = [self.sot_id, *enc.ids[: context_length - 2], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (specials and padding dropped; word ends become spaces)."""
        keep: list[int] = []
        for i in map(int, ids):
            if i == self.eot_id:  # what follows EOT is padding
                break
            if i != self.sot_id:
                keep.append(i)
        byte_decoder = {v: k for k, v in bytes_to_unicode().items()}
        out = bytearray()
        for tok in (self.hf.id_to_token(i) for i in keep):
            if tok is None:
                continue
            word_end = tok.endswith(WORD_END)
            out += bytes(byte_decoder[c] for c in tok.removesuffix(WORD_END) if c in byte_decoder)
            if word_end:
                out += b" "
        return out.decode("utf-8", "replace").strip()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` into ``directory``; returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / TOKENIZER_FILE
        tmp = d / f".tmp-{TOKENIZER_FILE}"
        self.hf.save(str(tmp))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load from a directory holding ``tokenizer.json``, that file, or an OpenAI ``.txt.gz`` BPE file."""
        p = Path(path)
        if p.is_dir():
            p = p / TOKENIZER_FILE
        if not p.is_file():
            raise FileNotFoundError(f"no tokenizer at {path!s} (expected a directory with {TOKENIZER_FILE})")
        if p.name.endswith(".gz"):
            return cls.from_openai_bpe(p)
        return cls(HFTokenizer.from_file(str(p)))

    @classmethod
    def from_openai_bpe(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """OpenAI's ``bpe_simple_vocab_16e6.txt.gz``: a version line, then one ``a b`` merge per line.

        OpenAI uses the first 49152 - 256 - 2 merges; the vocabulary is 49408 ids.
        """
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        merges_text = lines[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges_text if m.strip()]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise ValueError(f"{path}: not an OpenAI BPE merges file (bad line {' '.join(bad[0])!r})")
        return cls(_build_hf(merges))  # type: ignore[arg-type]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 49152, min_frequency: int = 2) -> Tokenizer:
    """Train CLIP-style BPE on ``texts``; the vocabulary has at most ``vocab_size`` ids.

    A small corpus yields fewer merges and so a smaller vocabulary; :attr:`Tokenizer.vocab_size`
    tells the real size (the model is built with it).
    """
    if vocab_size < 512 + 2 + 1:
        raise ValueError(f"vocab_size {vocab_size} is too small: 512 byte symbols + 2 specials come first")
    work = HFTokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=WORD_END))
    work.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    n_merges = vocab_size - 512 - 2
    trainer = BpeTrainer(
        # the trainer counts its alphabet in vocab_size: ask for room for all merges we want
        vocab_size=n_merges + 1024,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=WORD_END,
        show_progress=False,
    )

    def cleaned() -> Iterator[str]:
        for t in texts:
            if t:
                yield clean_text(t)

    work.train_from_iterator(cleaned(), trainer=trainer)
    raw = json.loads(work.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw]
    return Tokenizer(_build_hf(merges[:n_merges]))  # type: ignore[arg-type]
