"""The CLIP model: ModifiedResNet or ViT image encoder, causal text Transformer, learned temperature.

Parameter names and shapes follow OpenAI's released checkpoints (``clip/model.py``), so their state
dicts load with :meth:`CLIP.load_state_dict` and webclip exports load into tools that read that
format. Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory
efficient kernels on GPU) with the fused ``in_proj_weight`` layout of ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from train.model_configs import ModelConfig, get_config

# Non-tensor entries OpenAI's state dicts carry; dropped on load.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


class QuickGELU(nn.Module):
    """OpenAI's GELU approximation (the released weights were trained with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (as OpenAI's), cast back after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig = x.dtype
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(orig)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, run through SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of pre-LN residual attention blocks over batch-first ``[B, N, C]`` tokens."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.grad_checkpointing = False
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # non-reentrant checkpointing works with ZeRO-3's parameter hooks
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(
        self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self.input_resolution = image_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn((image_size // patch_size) ** 2 + 1, width)
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, grid², width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased striding: an avgpool before the stride-1 third conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token attends over the spatial grid (QKV-attention, one query)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        b, n, c = x.shape
        h = self.num_heads
        q = self.q_proj(x[:, :1]).view(b, 1, h, c // h).transpose(1, 2)
        k = self.k_proj(x).view(b, n, h, c // h).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem with an avgpool, anti-aliased strided blocks, attention pooling."""

    def __init__(
        self, layers: tuple[int, int, int, int], output_dim: int, heads: int, image_size: int, width: int
    ):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"ResNet image size {image_size} must be a multiple of 32")
        self.input_resolution = image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self.grad_checkpointing = False

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.attnpool(x)


class CLIP(nn.Module):
    """Contrastive image–text model.

    ``encode_image``/``encode_text`` return unnormalised features ``[B, embed_dim]``; ``forward``
    returns the L2-normalised features of both and ``logit_scale.exp()``. The text feature is the
    final-LayerNorm activation at the end-of-text token, found as the highest token id (the EOT token
    is the last id of every webclip and OpenAI vocabulary).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: float | None = None,
    ):
        super().__init__()
        self.config = cfg
        self.context_length = cfg.context_length
        if cfg.is_vit:
            assert isinstance(cfg.vision_layers, int) and cfg.vision_patch_size is not None
            self.visual: nn.Module = VisionTransformer(
                cfg.image_size,
                cfg.vision_patch_size,
                cfg.vision_width,
                cfg.vision_layers,
                cfg.resolved_vision_heads,
                cfg.embed_dim,
            )
        else:
            assert isinstance(cfg.vision_layers, tuple)
            self.visual = ModifiedResNet(
                cfg.vision_layers, cfg.embed_dim, cfg.resolved_vision_heads, cfg.image_size, cfg.vision_width
            )
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.resolved_text_heads, causal=True)
        self.vocab_size = cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        # SigLIP's learned bias; absent for the softmax loss so the state dict stays OpenAI's.
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(init_logit_bias))) if init_logit_bias is not None else None
        )
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's initialisation (normal std 0.02/0.01, scaled projections, zero-init BN gamma)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(lin.weight, std=std)
            for layer in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in layer.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)
        t = self.transformer
        proj_std = (t.width**-0.5) * ((2 * t.layers) ** -0.5)
        attn_std = t.width**-0.5
        fc_std = (2 * t.width) ** -0.5
        for block in t.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=t.width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations of each block in backward: less memory for ~30% more compute."""
        self.transformer.grad_checkpointing = enable
        vt = getattr(self.visual, "transformer", None)
        if vt is not None:
            vt.grad_checkpointing = enable
        if isinstance(self.visual, ModifiedResNet):
            self.visual.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images.to(self.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, return_bias: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """``(image_features, text_features, logit_scale.exp())``, features L2-normalised.

        ``return_bias=True`` appends the SigLIP logit bias (None without one); it is read inside
        ``forward`` because ZeRO-3 only gathers a module's parameters while its forward runs.
        """
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        if return_bias:
            bias = self.logit_bias * 1.0 if self.logit_bias is not None else None
            return image_features, text_features, self.logit_scale.exp(), bias
        return image_features, text_features, self.logit_scale.exp()

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load a webclip or OpenAI state dict (OpenAI's non-tensor ``input_resolution`` etc. are dropped)."""
        state_dict = {k: v for k, v in state_dict.items() if k not in OPENAI_META_KEYS}
        for key in ("logit_scale", "logit_bias"):  # [] in OpenAI's files, [1] in DeepSpeed checkpoints
            own = getattr(self, key, None)
            if key in state_dict and own is not None and state_dict[key].numel() == 1:
                state_dict[key] = state_dict[key].reshape(own.shape)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def scalars_as_vectors(model: CLIP) -> CLIP:
    """Give 0-dim parameters shape ``[1]`` in place: DeepSpeed's broadcast cannot view a 0-dim tensor.

    Exports reshape them back to OpenAI's ``[]``.
    """
    for key in ("logit_scale", "logit_bias"):
        p = getattr(model, key, None)
        if p is not None and p.ndim == 0:
            setattr(model, key, nn.Parameter(p.detach().reshape(1).clone()))
    return model


def build_model(name: str, **overrides: Any) -> CLIP:
    """Build the registered model ``name`` (see :data:`train.model_configs.MODEL_CONFIGS`).

    ``overrides`` are :class:`ModelConfig` fields (``vocab_size=…``, ``image_size=…``) plus
    ``init_logit_scale`` / ``init_logit_bias`` (SigLIP: ``log(10)`` and ``-10``).
    """
    init = {k: overrides.pop(k) for k in ("init_logit_scale", "init_logit_bias") if k in overrides}
    return CLIP(get_config(name, **overrides), **init)


def config_from_openai_state_dict(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """Infer the architecture from an OpenAI-format state dict, as ``clip.model.build_model`` does."""
    vit = "visual.proj" in sd
    if vit:
        width = sd["visual.conv1.weight"].shape[0]
        layers: Any = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image_size = patch * grid
        heads = width // 64
    else:
        layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
        )
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        image_size = grid * 32
        patch = None
        heads = width * 32 // 64
    text_width = sd["ln_final.weight"].shape[0]
    text_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    return ModelConfig(
        embed_dim=sd["text_projection"].shape[1],
        image_size=image_size,
        vision_layers=layers,
        vision_width=width,
        vision_patch_size=patch,
        vision_heads=heads,
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_heads=max(1, text_width // 64),
        text_layers=text_layers,
    )
