"""Flat parameters (train/flat_params.py): the wrapped model computes exactly what the model computes,
maps its state back to OpenAI's names, and is refused under ZeRO-3 before any work.

The trainer runs flat by default under ZeRO 0-2, so the DeepSpeed tests in test_trainer.py (clamp,
accumulation, resume, evaluation, export, 2-process runs) run on it; test_trainer.py also compares a
ZeRO-2 run with per-tensor parameters against the same run flat.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.rundir import RunDir
from train.config import TrainConfig
from train.dsutil import model_for_engine, param_group_names, param_groups
from train.flat_params import FlatParameters, align_up, unwrap
from train.loss import ClipLoss
from train.model import build_model, scalars_as_vectors
from train.stage import TrainStage


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return scalars_as_vectors(build_model(name, vocab_size=300))


def _batch(model: torch.nn.Module, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    images = torch.randn(4, 3, size, size, generator=g)
    tokens = torch.randint(1, 299, (4, 77), generator=g)
    tokens[:, 9] = 299  # end of text
    return images, tokens


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_flat_model_loss_and_gradients_equal_the_models(name, checkpointing):
    """Two forward/backward passes (the second after an in-place update of the flat tensors, as the
    optimizer makes): equal losses and, mapped back to names, equal gradients. tiny-rn has BatchNorm
    buffers; gradient checkpointing recomputes blocks in backward from the views."""
    ref = _model(name)
    ref.set_grad_checkpointing(checkpointing)
    flat = model_for_engine(copy.deepcopy(ref), True)
    assert isinstance(flat, FlatParameters)
    assert [n for n, _ in flat.named_parameters()] == ["flat_decay", "flat_no_decay"]
    for seed in (0, 1):
        ref.zero_grad()
        flat.zero_grad()
        batch = _batch(ref, seed)
        loss_ref = ClipLoss()(*ref(*batch))
        loss_ref.backward()
        loss_flat = ClipLoss()(*flat(*batch))
        loss_flat.backward()
        assert torch.equal(loss_ref, loss_flat)
        grads = flat.unflatten({f"flat_{g}": flat.flat(g).grad for g in flat.groups})
        for n, p in ref.named_parameters():
            assert torch.equal(grads[n], p.grad), n
        with torch.no_grad():  # a step: the next forward must read the new values
            for p in ref.parameters():
                p.sub_(0.1 * p.grad)
            for g in flat.groups:
                flat.flat(g).sub_(0.1 * flat.flat(g).grad)


def test_state_dict_maps_back_to_the_models_names_and_order():
    ref = _model("tiny-rn")
    flat = model_for_engine(copy.deepcopy(ref), True)
    sd = flat.unflatten(flat.state_dict())
    want = ref.state_dict()
    assert list(sd) == list(want)  # OpenAI's key order, buffers (BatchNorm statistics) included
    for k, v in want.items():
        assert torch.equal(sd[k], v), k
    assert "flat_no_decay" in flat.state_dict() and "module.visual.bn1.running_mean" in flat.state_dict()


def test_groups_follow_the_weight_decay_rule():
    ref = _model("tiny-vit")
    flat = model_for_engine(copy.deepcopy(ref), True)
    names = dict(param_group_names(ref))
    for group in param_groups(flat, 0.2):
        (p,) = group["params"]
        assert p is flat.flat(group["name"])
        slots = [s for s in flat.slots if s.group == group["name"]]
        assert [s.name for s in slots] == names[group["name"]]
        assert sum(s.numel for s in slots) == sum(
            dict(ref.named_parameters())[n].numel() for n in names[group["name"]]
        )
        assert p.numel() == align_up(slots[-1].offset + slots[-1].numel)  # aligned slots, padded end
        assert group["weight_decay"] == (0.2 if group["name"] == "decay" else 0.0)
    assert "logit_scale" in names["no_decay"] and "visual.proj" in names["decay"]


def test_dtype_change_and_unwrap_give_the_current_weights():
    """``.bfloat16()`` replaces the flat tensors: the model's views follow, and ``unwrap`` hands
    evaluation a model whose weights are the flat tensors' current values."""
    ref = _model("tiny-vit")
    flat = model_for_engine(copy.deepcopy(ref), True).bfloat16()
    # the views moved with the flat tensors (stale ones would keep the old fp32 storage alive)
    weight = flat.module.token_embedding.weight
    assert weight.dtype == torch.bfloat16
    assert weight.untyped_storage().data_ptr() == flat.flat("decay").untyped_storage().data_ptr()
    with torch.no_grad():
        flat.flat("decay").mul_(0.5)
    model = unwrap(flat)
    assert model.dtype == torch.bfloat16
    images, tokens = _batch(ref, 0)
    want = ref.bfloat16()
    with torch.no_grad():
        for n, p in want.named_parameters():
            if n in dict(param_group_names(want))["decay"]:
                p.mul_(0.5)
        assert torch.equal(model.encode_text(tokens), want.encode_text(tokens))
        assert torch.equal(model.encode_image(images), want.encode_image(images))


def test_groups_must_name_every_parameter_once():
    ref = _model("tiny-vit")
    decay, no_decay = (names for _, names in param_group_names(ref))
    with pytest.raises(ValueError, match=r"missing .*logit_scale"):
        FlatParameters(ref, [("decay", decay), ("no_decay", [n for n in no_decay if n != "logit_scale"])])


@pytest.mark.parametrize(("flat", "stage", "want"), [(None, 2, True), (None, 3, False), (False, 1, False)])
def test_flat_params_setting_resolves_per_zero_stage(flat, stage, want):
    assert TrainConfig(flat_params=flat).flat_params_for(stage) is want


def test_flat_params_under_zero3_stops_the_stage_before_any_work(tmp_path, make_config):
    cfg = make_config(
        "train.data=unused", "train.deepspeed_config=infra/deepspeed/zero3.json", "train.flat_params=true"
    )
    stage = TrainStage(cfg, RunDir(str(tmp_path / "run")))
    with pytest.raises(ConfigError, match=r"train\.flat_params: ZeRO-3 .* set train\.flat_params=false"):
        stage.validate()
    assert not (tmp_path / "run").exists()


def test_resuming_checkpoints_of_the_other_layout_stops_before_any_work(tmp_path):
    from train.checkpoints import check_resume

    (tmp_path / "latest").write_text("step3")
    (tmp_path / "params_layout").write_text("per-tensor aligned\n")
    assert check_resume(tmp_path, flat=False, resume=True, world=1, steps=6) == 3
    assert check_resume(tmp_path, flat=True, resume=False, world=1, steps=6) is None  # starting over
    with pytest.raises(ConfigError, match=r"hold per-tensor parameters; set train\.flat_params=false"):
        check_resume(tmp_path, flat=True, resume=True, world=1, steps=6)
    # checkpoints of the unaligned packing: their optimizer state is in another order
    (tmp_path / "params_layout").write_text("flat\n")
    with pytest.raises(ConfigError, match=r"packed parameters unaligned .* train\.resume=false"):
        check_resume(tmp_path, flat=True, resume=True, world=1, steps=6)
