"""Named CLIP architectures: the paper's released models and tiny ones that train on a CPU in minutes.

Numbers for the released models are those of OpenAI's ``clip/model.py:build_model`` as inferred from
their checkpoints (embed dim, input resolution, vision layers/width/patch, text width/heads/layers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """The hyper-parameters that define a CLIP model's architecture (and so its state-dict shapes).

    ``vision_layers`` is an int for a ViT and a 4-tuple of block counts for a ModifiedResNet;
    ``vision_patch_size`` is None for a ResNet. ``vision_heads``/``text_heads`` default to OpenAI's
    rule (width // 64, and width * 32 // 64 for ResNets) when None.
    """

    embed_dim: int
    image_size: int
    vision_layers: int | tuple[int, int, int, int]
    vision_width: int
    vision_patch_size: int | None = None
    vision_heads: int | None = None
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int | None = None
    text_layers: int = 12
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_vit(self) -> bool:
        return self.vision_patch_size is not None

    @property
    def resolved_vision_heads(self) -> int:
        if self.vision_heads is not None:
            return self.vision_heads
        return self.vision_width // 64 if self.is_vit else self.vision_width * 32 // 64

    @property
    def resolved_text_heads(self) -> int:
        return self.text_heads if self.text_heads is not None else max(1, self.text_width // 64)

    def with_overrides(self, **overrides: Any) -> ModelConfig:
        """A copy with ``overrides`` applied; unknown keys raise ``ValueError`` naming the valid ones."""
        valid = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"unknown model config keys {bad}; valid keys: {sorted(valid)}")
        if isinstance(overrides.get("vision_layers"), list):
            overrides["vision_layers"] = tuple(overrides["vision_layers"])
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["vision_layers"], tuple):
            d["vision_layers"] = list(d["vision_layers"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        if isinstance(data.get("vision_layers"), list):
            data["vision_layers"] = tuple(data["vision_layers"])
        return cls(**data)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    # ModifiedResNets (3-conv stem, anti-aliased strided convs, attention pooling)
    "RN50": ModelConfig(1024, 224, (3, 4, 6, 3), 64),
    "RN101": ModelConfig(512, 224, (3, 4, 23, 3), 64),
    "RN50x4": ModelConfig(640, 288, (4, 6, 10, 6), 80, text_width=640),
    "RN50x16": ModelConfig(768, 384, (6, 8, 18, 8), 96, text_width=768),
    "RN50x64": ModelConfig(1024, 448, (3, 15, 36, 10), 128, text_width=1024),
    # Vision Transformers
    "ViT-B-32": ModelConfig(512, 224, 12, 768, vision_patch_size=32),
    "ViT-B-16": ModelConfig(512, 224, 12, 768, vision_patch_size=16),
    "ViT-L-14": ModelConfig(768, 224, 24, 1024, vision_patch_size=14, text_width=768),
    # Tiny models for CPU tests and demos: same code paths, a few hundred thousand parameters.
    "tiny-vit": ModelConfig(
        64, 32, 2, 64, vision_patch_size=8, vision_heads=2, text_width=64, text_heads=2, text_layers=2
    ),
    "tiny-rn": ModelConfig(
        64, 64, (1, 1, 1, 1), 8, vision_heads=4, text_width=64, text_heads=2, text_layers=2
    ),
}
# The slash spellings of OpenAI's model names.
ALIASES = {"ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14"}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` registered as ``name`` (``ViT-B/32`` spelling accepted), with overrides."""
    key = ALIASES.get(name, name)
    if key not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[key].with_overrides(**overrides) if overrides else MODEL_CONFIGS[key]
