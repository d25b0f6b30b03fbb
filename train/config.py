"""Configuration schema of the train stage (``train:`` in the run YAML)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.errors import ConfigError
from pipeline.section import Section


def read_ds_json(path: str | Path) -> dict[str, Any]:
    """The DeepSpeed JSON at ``path``; ConfigError naming the file when it is missing or not JSON."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"train.deepspeed_config: {str(path)!r} does not exist; pass one of infra/deepspeed/*.json")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None


class TrainConfig(Section):
    """CLIP training: model, tokenizer, data, optimisation, checkpoints, logging and launch."""

    # model
    model: str = Field("tiny-vit", description="registered model name (train.model_configs.MODEL_CONFIGS)")
    model_overrides: dict[str, Any] = Field(
        default_factory=dict, description="ModelConfig fields to override"
    )
    loss: Literal["clip", "siglip"] = Field("clip", description="softmax CLIP loss or sigmoid SigLIP loss")
    grad_checkpointing: bool = Field(False, description="recompute block activations in backward")
    # tokenizer
    tokenizer: str | None = Field(
        None,
        description="tokenizer dir/tokenizer.json or OpenAI bpe_simple_vocab_16e6.txt.gz; None: train one",
    )
    vocab_size: int = Field(49152, ge=515, le=1_000_000, description="BPE vocabulary size when training one")
    tokenizer_max_texts: int = Field(1_000_000, ge=1, description="captions read to train the tokenizer")
    # data
    data: str | list[str] | None = Field(
        None, description="shards: a glob, brace pattern or URL list; None: <run>/clean/*.tar"
    )
    batch_size: int = Field(
        32, ge=1, description="micro-batch per process (DeepSpeed train_micro_batch_size_per_gpu)"
    )
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps per optimizer step")
    workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="loader worker processes per training process; None: the cores per local process "
        "minus one, 1 to 16 (train.trainer.loader_workers)",
    )
    shuffle_buffer: int = Field(1000, ge=0, description="sample shuffle buffer (0: off)")
    resampled: bool = Field(
        False, description="draw shards with replacement forever (any shard count per rank)"
    )
    # optimisation
    steps: int = Field(100, ge=1, description="optimizer steps to train")
    lr: float = Field(5e-4, gt=0, description="peak learning rate")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the cosine")
    warmup: int = Field(10, ge=0, description="linear warmup steps")
    weight_decay: float = Field(
        0.2, ge=0, description="AdamW decoupled weight decay (not on gains/biases/scale)"
    )
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    eps: float = Field(1e-6, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm (0: off)")
    max_logit_scale: float = Field(
        100.0, gt=1, description="clamp of exp(logit_scale), applied to master weights"
    )
    # DeepSpeed and launch
    deepspeed_config: str = Field(
        "infra/deepspeed/zero2.json", description="DeepSpeed JSON (ZeRO stage, precision)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: what the DeepSpeed JSON says; else overrides it"
    )
    zero_stage: int | None = Field(None, ge=0, le=3, description="override the JSON's ZeRO stage")
    launcher: Literal["deepspeed", "torchrun", "python"] = Field(
        "deepspeed", description="how the train stage launches train/main.py"
    )
    num_procs: int = Field(1, ge=1, description="processes per node the train stage launches")
    hostfile: str | None = Field(
        None, description="DeepSpeed hostfile for multi-node runs (launcher=deepspeed)"
    )
    compile: bool | None = Field(
        None,
        description="torch.compile the model through engine.compile(); None: on for CUDA with ZeRO 0-2, "
        "off on CPU and under ZeRO-3",
    )
    flat_params: bool | None = Field(
        None,
        description="hold the parameters as one flat tensor per AdamW group, so DeepSpeed's per-parameter "
        "ZeRO loops run twice per step instead of once per tensor; None: on for ZeRO 0-2, off for ZeRO-3 "
        "(which gathers each parameter whole); checkpoints resume only with the same setting",
    )
    # checkpoints and logging
    checkpoint_every: int = Field(
        50, ge=0, description="save a checkpoint every N steps (0: only at the end)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk")
    resume: bool = Field(True, description="resume from the latest checkpoint in <run>/train/checkpoints")
    log_every: int = Field(
        10,
        ge=1,
        description="console/monitor logging interval in steps; loss and logit scale stay on the device "
        "until then (one host sync per interval; metrics.jsonl still gets a row per step)",
    )
    eval_every: int = Field(
        0, ge=0, description="zero-shot eval on the run's evalsets every N steps (0: off)"
    )
    eval_limit: int = Field(
        500, ge=1, description="images per eval set for zero-shot during training: a class-stratified "
        "sample drawn with the eval set's `seed`, never the first N"
    )
    stop_after: int | None = Field(None, ge=1, description="exit after this step without finishing (tests)")

    def zero_stage_in(self, ds_json: dict[str, Any]) -> int:
        """The ZeRO stage a run with this config and DeepSpeed JSON uses (``zero_stage`` overrides)."""
        if self.zero_stage is not None:
            return self.zero_stage
        return int(ds_json.get("zero_optimization", {}).get("stage", 0))

    def flat_params_for(self, zero_stage: int) -> bool:
        """``flat_params`` resolved for ``zero_stage`` (None: on for ZeRO 0-2); ConfigError under ZeRO-3."""
        if self.flat_params is None:
            return zero_stage < 3
        if self.flat_params and zero_stage >= 3:
            raise ConfigError(
                "train.flat_params: ZeRO-3 partitions and gathers each parameter on its own, and would "
                "gather a flat parameter (the whole model) at once; set train.flat_params=false or "
                "leave it unset (off under ZeRO-3)"
            )
        return self.flat_params

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from train.model_configs import ALIASES, MODEL_CONFIGS

        if ALIASES.get(v, v) not in MODEL_CONFIGS:
            raise ValueError(f"unknown model {v!r}; known: {', '.join(MODEL_CONFIGS)}")
        return v
