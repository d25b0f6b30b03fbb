"""Resuming applies the configured learning-rate schedule, not the one saved in the checkpoint."""

from __future__ import annotations

import torch

from train.dsutil import apply_lr_schedule, cosine_with_warmup


def _optimizer_and_schedule(lr: float, steps: int = 100, warmup: int = 10):
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, steps, warmup, lr, 0.0))
    return opt, sched


def _run(opt, sched, n: int) -> None:
    for _ in range(n):
        opt.step()
        sched.step()


def test_resume_with_a_lower_lr_goes_on_at_the_new_rate():
    opt, sched = _optimizer_and_schedule(1e-3)
    _run(opt, sched, 30)
    saved = (opt.state_dict(), sched.state_dict())

    # resumed under train.lr = 1e-4: without apply_lr_schedule the checkpoint's 1e-3 would come back
    opt2, sched2 = _optimizer_and_schedule(1e-4)
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    assert opt2.param_groups[0]["lr"] > 5e-4  # what loading alone gives
    assert apply_lr_schedule(opt2, sched2, 1e-4) == 1e-3
    want = 1e-4 * cosine_with_warmup(30, 100, 10, 1e-4, 0.0)
    assert [g["lr"] for g in opt2.param_groups] == [want, want]
    _run(opt2, sched2, 1)
    assert opt2.param_groups[1]["lr"] == 1e-4 * cosine_with_warmup(31, 100, 10, 1e-4, 0.0)


def test_resume_with_the_same_config_keeps_the_exact_rate():
    opt, sched = _optimizer_and_schedule(1e-3)
    _run(opt, sched, 12)
    before = [g["lr"] for g in opt.param_groups]
    opt2, sched2 = _optimizer_and_schedule(1e-3)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    apply_lr_schedule(opt2, sched2, 1e-3)
    assert [g["lr"] for g in opt2.param_groups] == before  # bit for bit: exact resume is unchanged
