"""The JSON lines of ``benchmarks/gpu_plan.sh`` (or ``benchmarks/train.py``) as one Markdown table.

    python benchmarks/gpu_report.py /work/.device/<files_at>/*.jsonl    # then paste into BENCHMARKS.md

One row per measurement (model, batch, loop, data, DeepSpeed overrides, samples/s, ms/step, MFU,
peak GPU memory, host syncs and aten ops per step, graph breaks, and with ``--gemm-kernels`` the GEMM
time per step, its share on pre-Hopper kernels and the top kernel), then the derived lines the runs
printed (DeepSpeed's overhead vs the bare loop, real shards vs synthetic), each with its file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [
    ("model", "model"),
    ("batch", "batch"),
    ("mode", "loop"),
    ("data", "data"),
    ("ds_set", "DeepSpeed overrides"),
    ("flat_params", "flat params"),
    ("samples_per_s", "samples/s"),
    ("ms_per_step", "ms/step"),
    ("mfu", "MFU"),
    ("peak_gpu_gib", "peak GPU GiB"),
    ("host_syncs_per_step", "host syncs/step"),
    ("aten_ops_per_step", "aten ops/step"),
    ("graph_breaks", "graph breaks"),
    ("gemm_ms_per_step", "GEMM ms/step"),
    ("gemm_old_arch_share", "GEMM on pre-sm90 kernels"),
    ("gemm_kernels", "top GEMM kernel"),
]


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key == "ds_set":
        return ", ".join(f"`{v}`" for v in value) or "as shipped"
    if key == "flat_params":
        return "yes" if value else "no"
    if key in ("mfu", "gemm_old_arch_share"):
        return f"{100 * value:.1f} %"
    if key == "gemm_kernels":
        return f"`{value[0]['kernel'][:48]}`" if value else ""
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def report(paths: list[Path]) -> str:
    """The Markdown table and derived lines of the measurements in ``paths``."""
    rows, derived, devices = [], [], set()
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "mode" in record:
                rows.append(record)
                devices.add(str(record.get("device")))
            elif "model" not in record:  # deepspeed_overhead_vs_bare, shards_vs_synthetic
                derived.append((path.name, record))
    out = [f"device: {', '.join(sorted(devices)) or 'none recorded'}", ""]
    out.append("| " + " | ".join(title for _, title in COLUMNS) + " |")
    out.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        out.append("| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    for name, record in derived:
        out.append("")
        out.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in record.items()))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", nargs="+", type=Path)
    print(report(ap.parse_args().jsonl))


if __name__ == "__main__":
    main()
