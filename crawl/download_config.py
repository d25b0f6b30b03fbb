"""Configuration schema of the download stage (img2dataset into WebDataset shards, with safety limits)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from pipeline.section import Section


class DownloadConfig(Section):
    """Downloading the curated list into WebDataset shards: image settings, politeness and safety limits."""

    # -- what is written (img2dataset's resizer and writer) ------------------------------------
    image_size: int = Field(256, ge=8, le=8192, description="target side in pixels for the resize mode")
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"] = Field(
        "center_crop", description="img2dataset resize mode"
    )
    resize_only_if_bigger: bool = Field(False, description="only downscale, never upscale small images")
    encode_format: Literal["jpg", "png", "webp"] = Field("jpg", description="format of the stored images")
    encode_quality: int = Field(95, ge=0, le=100, description="jpg/webp quality (png: compression 0-9)")
    min_image_size: int = Field(0, ge=0, description="refuse images whose smaller side is below this")
    samples_per_shard: int = Field(
        10_000, ge=1, le=1_000_000, description="curated rows per output shard (the unit of resume)"
    )
    exif_transpose: bool = Field(
        True, description="turn images upright by their EXIF orientation tag before resizing"
    )
    # -- how it is fetched -----------------------------------------------------------------------
    thread_count: int = Field(64, ge=1, le=1024, description="download threads per shard task")
    timeout: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "seconds allowed for one request: DNS, connect, TLS, headers, body and every redirect hop "
            "together (time queued for a host slot excluded)"
        ),
    )
    retries: int = Field(0, ge=0, le=10, description="retries of transient network errors (timeouts, resets)")
    user_agent_token: str = Field(
        "webclip",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="crawler name sent in User-Agent and matched in `X-Robots-Tag: <token>: …`",
    )
    contact_url: str = Field(
        "https://github.com/webclip/webclip#crawler",
        description="URL site owners can read about the crawler / opt out; sent in User-Agent",
    )
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that make an image refused (robots_noai)",
    )
    per_host_concurrency: int = Field(
        8,
        ge=1,
        le=1024,
        description=(
            "max concurrent requests to one registrable domain across every task of the run (each of "
            "the K tasks the plan spreads it over gets 1/K), and to one address from one task"
        ),
    )
    per_host_rps: float = Field(
        20.0,
        ge=0,
        le=100_000,
        description=(
            "max request starts per second to one registrable domain across every task of the run "
            "(each of its K tasks gets 1/K); 0 = no limit"
        ),
    )
    pause_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description=(
            "how often a shard task reads the cluster's host pauses (a 429/503 with Retry-After seen by "
            "any task holds the host for every task within this delay)"
        ),
    )
    throttle_retries: int = Field(
        3, ge=0, le=20, description="retries of a 429/503 answer (honouring Retry-After) before giving up"
    )
    backoff_base_seconds: float = Field(1.0, ge=0, le=600, description="first backoff when no Retry-After")
    backoff_cap_seconds: float = Field(
        30.0, ge=0, le=3600, description="longest single wait on 429/503, even if Retry-After asks more"
    )
    max_redirects: int = Field(5, ge=0, le=30, description="redirect hops followed (each one re-checked)")
    # -- safety limits ---------------------------------------------------------------------------
    max_image_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="bytes read per image at most (too_large beyond)"
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="width×height above which an image is refused (decompression_bomb)"
    )
    allow_addresses: list[str] = Field(
        default_factory=list,
        description=(
            "IP addresses / CIDR networks allowed although private, loopback or reserved "
            "(tests and the demo allow their loopback server only, e.g. ['127.0.0.1/32'])"
        ),
    )
    shard_retries: int = Field(
        1, ge=0, le=10, description="in-task retries of a shard that raised, before the runner's own retries"
    )

    @field_validator("contact_url")
    @classmethod
    def _contact_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or " " in value:
            raise ValueError("must be an http(s) URL where site owners can read about the crawler")
        return value

    @field_validator("allow_addresses")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or CIDR network; write e.g. '127.0.0.1/32'"
                ) from None
        return value

    @field_validator("disallowed_header_directives")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value if v.strip()]

    @property
    def user_agent(self) -> str:
        """The User-Agent header: names the crawler and where to read about it."""
        return f"{self.user_agent_token}/1.0 (+{self.contact_url})"
