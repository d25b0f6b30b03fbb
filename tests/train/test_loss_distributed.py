"""2-process gloo: gathered loss and every gradient equal one process on the concatenated batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

B_PER_RANK = 4


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2 * B_PER_RANK, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 500, (2 * B_PER_RANK, 77), generator=g)
    tokens[:, 9] = 999  # the EOT (highest id) where the text is pooled
    tokens[:, 10:] = 0
    return images, tokens


def _model(kind: str):
    from train.model import build_model

    torch.manual_seed(0)
    extra = {"init_logit_bias": -10.0, "init_logit_scale": 2.3} if kind == "siglip" else {}
    return build_model("tiny-vit", vocab_size=1000, **extra).float()


def _grads(kind: str, images, tokens, rank: int, world: int) -> tuple[float, dict[str, torch.Tensor]]:
    from train.loss import make_loss

    model = _model(kind)
    img, txt, scale, bias = model(images, tokens, return_bias=True)
    loss = make_loss(kind, rank, world)(img, txt, scale, bias)
    loss.backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    images, tokens = _batch()
    sl = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
    results = {}
    for kind in ("clip", "siglip"):
        loss, grads = _grads(kind, images[sl], tokens[sl], rank, world)
        # data parallel: average the losses and gradients over ranks (what DeepSpeed's allreduce does)
        t = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(t)
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        results[kind] = (float(t) / world, grads)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path_factory.mktemp("two_rank") / "rank0.pt"
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    return torch.load(out)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_rank_loss_and_grads_equal_single_process(kind, two_rank_results):
    images, tokens = _batch()
    ref_loss, ref_grads = _grads(kind, images, tokens, 0, 1)
    loss, grads = two_rank_results[kind]
    assert abs(loss - ref_loss) < 1e-5
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-5, rtol=1e-5), name
        if name == "logit_scale":
            assert g.abs().item() > 0  # the temperature's gradient flows too
