"""Model state dicts in OpenAI's names/shapes, export round trip, tokenizer formats, transforms."""

from __future__ import annotations

import gzip

import pytest
import torch
from PIL import Image


def openai_vit_b32_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of OpenAI's ViT-B/32 checkpoint, written from the released architecture."""
    s: dict[str, tuple[int, ...]] = {
        "positional_embedding": (77, 512),
        "text_projection": (512, 512),
        "logit_scale": (),
        "visual.class_embedding": (768,),
        "visual.positional_embedding": (50, 768),
        "visual.proj": (768, 512),
        "visual.conv1.weight": (768, 3, 32, 32),
        "visual.ln_pre.weight": (768,),
        "visual.ln_pre.bias": (768,),
        "visual.ln_post.weight": (768,),
        "visual.ln_post.bias": (768,),
        "token_embedding.weight": (49408, 512),
        "ln_final.weight": (512,),
        "ln_final.bias": (512,),
    }
    for prefix, w in (("visual.transformer", 768), ("transformer", 512)):
        for i in range(12):
            b = f"{prefix}.resblocks.{i}"
            s |= {
                f"{b}.attn.in_proj_weight": (3 * w, w),
                f"{b}.attn.in_proj_bias": (3 * w,),
                f"{b}.attn.out_proj.weight": (w, w),
                f"{b}.attn.out_proj.bias": (w,),
                f"{b}.ln_1.weight": (w,),
                f"{b}.ln_1.bias": (w,),
                f"{b}.mlp.c_fc.weight": (4 * w, w),
                f"{b}.mlp.c_fc.bias": (4 * w,),
                f"{b}.mlp.c_proj.weight": (w, 4 * w),
                f"{b}.mlp.c_proj.bias": (w,),
                f"{b}.ln_2.weight": (w,),
                f"{b}.ln_2.bias": (w,),
            }
    return s


def openai_rn50_visual_shapes() -> dict[str, tuple[int, ...]]:
    """The ``visual.*`` keys of OpenAI's RN50 (BatchNorm buffers included, num_batches_tracked not)."""
    s: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            s[f"{name}.{k}"] = (c,)

    s["visual.conv1.weight"] = (32, 3, 3, 3)
    bn("visual.bn1", 32)
    s["visual.conv2.weight"] = (32, 32, 3, 3)
    bn("visual.bn2", 32)
    s["visual.conv3.weight"] = (64, 32, 3, 3)
    bn("visual.bn3", 64)
    inplanes = 64
    for li, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1):
        for bi in range(blocks):
            p = f"visual.layer{li}.{bi}"
            s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if bi == 0:
                s[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    s["visual.attnpool.positional_embedding"] = (50, 2048)
    for k in ("q", "k", "v"):
        s[f"visual.attnpool.{k}_proj.weight"] = (2048, 2048)
        s[f"visual.attnpool.{k}_proj.bias"] = (2048,)
    s["visual.attnpool.c_proj.weight"] = (1024, 2048)
    s["visual.attnpool.c_proj.bias"] = (1024,)
    return s


def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    from train.model import build_model

    with torch.device("meta"):
        model = build_model(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_vit_b32_state_dict_matches_openai():
    assert _shapes("ViT-B/32") == openai_vit_b32_shapes()


def test_rn50_visual_state_dict_matches_openai():
    got = {k: v for k, v in _shapes("RN50").items() if k.startswith("visual.")}
    assert got == openai_rn50_visual_shapes()


def test_export_round_trip_and_openai_style_load(tmp_path, tokenizer):
    from train.export import load_model, write_export
    from train.model import build_model

    model = build_model("tiny-rn", vocab_size=tokenizer.vocab_size).eval()
    sd = model.state_dict()
    # an OpenAI file also carries these non-parameter entries
    openai_sd = {
        **sd,
        "input_resolution": torch.tensor(64),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(tokenizer.vocab_size),
    }
    write_export(
        tmp_path / "export",
        openai_sd,
        {"model": "tiny-rn", "overrides": {"vocab_size": tokenizer.vocab_size}},
        tokenizer,
    )
    loaded, tok, transform = load_model(tmp_path / "export")
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    img = transform(Image.new("RGB", (90, 70), (200, 10, 10))).unsqueeze(0)
    tokens = tok(["a red square"])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(img), model.encode_image(img), atol=1e-5)
        assert torch.allclose(loaded.encode_text(tokens), model.encode_text(tokens), atol=1e-5)


def _reference_bpe(merges: list[tuple[str, str]], word: str) -> list[str]:
    """OpenAI simple_tokenizer's BPE of one (byte-encoded) word, for checking ``from_openai_bpe``."""
    ranks = {m: i for i, m in enumerate(merges)}
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(parts[i], parts[i + 1]) for i in range(len(parts) - 1)]
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        out, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                out.append(parts[i] + parts[i + 1])
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def test_openai_bpe_file_format(tmp_path):
    from train.tokenizer import Tokenizer, bytes_to_unicode

    merges = [
        ("t", "h"),
        ("th", "e</w>"),
        ("c", "a"),
        ("ca", "t</w>"),
        ("a", "t</w>"),
        ("p", "h"),
        ("o", "t"),
    ]
    path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = Tokenizer.load(path)
    assert tok.vocab_size == 512 + len(merges) + 2 and tok.eot_id == tok.vocab_size - 1
    vocab = tok.hf.get_vocab()
    ids = tok(["The  CAT, the photo!"])[0].tolist()
    assert ids[0] == tok.sot_id
    expected = []
    b2u = bytes_to_unicode()
    for w in ["the", "cat", ",", "the", "photo", "!"]:
        expected += [vocab[p] for p in _reference_bpe(merges, "".join(b2u[b] for b in w.encode()))]
    assert ids[1 : 1 + len(expected) + 1] == [*expected, tok.eot_id]
    assert tok.decode(ids) == "the cat , the photo !"


def test_truncation_keeps_eot_and_save_load(tmp_path, tokenizer):
    from train.tokenizer import Tokenizer

    t = tokenizer(["a red square " * 60, "a blue stripe"])
    assert t.shape == (2, 77) and t[0, -1] == tokenizer.eot_id and t[0, 0] == tokenizer.sot_id
    tokenizer.save(tmp_path / "tok")
    assert torch.equal(Tokenizer.load(tmp_path / "tok")(["a blue stripe"]), t[1:])


@pytest.mark.parametrize("size", [32, 64])
def test_transforms(size):
    from train.transforms import CLIP_MEAN, eval_transform, train_transform

    img = Image.new("RGBA", (120, 80), (255, 255, 255, 0))
    x = eval_transform(size)(img)
    assert x.shape == (3, size, size)
    assert abs(float(x[0, 0, 0]) - (1 - CLIP_MEAN[0]) / 0.26862954) < 1e-3  # transparent -> white
    import random

    a = train_transform(size)(img, random.Random(1))
    b = train_transform(size)(img, random.Random(1))
    assert a.shape == (size, size, 3) and (a == b).all()
