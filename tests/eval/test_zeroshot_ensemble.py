"""The prompt-ensemble classifier, template files and class-name resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.zeroshot import (
    available_template_sets,
    build_classifier,
    ensemble_classifier,
    load_templates,
    packaged_classes,
    resolve_classnames,
)
from pipeline.errors import ConfigError
from pipeline.evalsets_spec import EvalSetSpec


def test_ensemble_is_exactly_normalised_mean_of_normalised_prompt_embeddings():
    g = torch.Generator().manual_seed(0)
    # prompts with very different norms: a plain mean would be dominated by the long ones
    emb = torch.randn(7, 80, 32, generator=g) * torch.rand(7, 80, 1, generator=g).mul(50).add(0.1)
    weights = ensemble_classifier(emb)
    assert weights.shape == (32, 7)
    for c in range(7):
        per_prompt = emb[c] / emb[c].norm(dim=-1, keepdim=True)
        mean = per_prompt.mean(dim=0)
        expect = mean / mean.norm()
        assert torch.equal(weights[:, c], expect), f"class {c} differs"
    # and it is not the normalised mean of the raw embeddings
    raw = emb.mean(1)
    assert not torch.allclose(weights.T, raw / raw.norm(dim=-1, keepdim=True), atol=1e-3)


def test_build_classifier_through_a_model_matches_per_class_encoding():
    from train.model import build_model
    from train.tokenizer import train_tokenizer

    classes = ["red circle", "blue square", "green triangle"]
    templates = load_templates("cifar10")
    texts = [t.format(c) for c in classes for t in templates]
    tok = train_tokenizer(texts, vocab_size=600, min_frequency=1)
    torch.manual_seed(0)
    model = build_model("tiny-vit", vocab_size=tok.vocab_size).eval()
    weights = build_classifier(model, tok, classes, templates, torch.device("cpu"), batch_size=7)
    with torch.no_grad():
        for c, name in enumerate(classes):
            e = model.encode_text(tok([t.format(name) for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            torch.testing.assert_close(weights[:, c], m / m.norm(), rtol=0, atol=1e-6)
    assert torch.allclose(weights.norm(dim=0), torch.ones(3))


def test_shipped_template_sets():
    assert {"imagenet", "cifar10", "cifar100", "mnist", "photo"} <= set(available_template_sets())
    imagenet = load_templates("imagenet")
    assert len(imagenet) == 80 and len(set(imagenet)) == 80
    assert "itap of a {}." in imagenet and all(t.count("{}") == 1 for t in imagenet)
    assert len(load_templates("cifar100")) == 18
    assert load_templates("mnist") == ['a photo of the number: "{}".']
    assert len(packaged_classes("cifar100")) == 100
    assert packaged_classes("cifar10")[0] == "airplane"


def test_template_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"shipped sets: .*imagenet"):
        load_templates("no-such-set")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a thing.\n")
    with pytest.raises(ConfigError, match=r"exactly one '\{\}'"):
        load_templates(str(bad))
    good = tmp_path / "good.txt"
    good.write_text("# comment\n\nan {} icon.\n")
    assert load_templates(str(good)) == ["an {} icon."]


def test_class_names(tmp_path):
    spec = EvalSetSpec(name="c", kind="folder", path=str(tmp_path), templates="cifar100")
    reader = [f"n{i}_x" for i in range(100)]
    assert resolve_classnames(spec, reader)[1] == "aquarium fish"  # shipped names win when counts agree
    spec = EvalSetSpec(name="c", kind="folder", path=str(tmp_path), templates="photo")
    assert resolve_classnames(spec, ["golden_retriever", "tabby"]) == ["golden retriever", "tabby"]
    spec = EvalSetSpec(name="c", kind="folder", path=str(tmp_path), classes=["a", "b"])
    assert resolve_classnames(spec, ["x", "y"]) == ["a", "b"]


def test_classify_counts_and_topk():
    from eval.features import ImageFeatures
    from eval.zeroshot import classify

    w = torch.eye(4)  # D=4, C=4: class c is dimension c
    feats = np.array([[5, 1, 0, 0], [0, 0, 3, 2], [1, 0, 0, 9]], dtype=np.float32)
    res = classify(ImageFeatures(["a", "b", "c"], np.array([0, 3, 3]), feats, [("d", "decode")]), w, top_k=2)
    assert res.pred.tolist() == [0, 2, 3]
    assert res.topk.tolist() == [[0, 1], [2, 3], [3, 0]]
    assert res.metrics["top1"] == pytest.approx(2 / 3)
    assert res.metrics["failed"] == 1
