"""``webclip plan``: core-hours, GPU-hours, memory, storage, wall time and cost of a dataset + training run.

Every rate comes from ``benchmarks/rates.json``, which the project's benchmarks write (``benchmarks/
scale.py --write-rates`` for vocab, match, balance and dedup) or which records, with its source, a
figure from BENCHMARKS.md (download, storage, GPU training, eval). Nothing here is measured: the plan
is rates × rows, so it is as good as those rates and the assumptions it prints (match rate, download
success, dedup survival), which the user can change. A stage without a rate is reported as not
measured and left out of the totals, never guessed.

The model, per stage (N = its input rows, c = cores doing it):

* worker CPU seconds = per-row µs × N + a fixed part per worker (matcher build, entry table) × c;
* driver CPU seconds = per-row µs × N + fixed (serial: it adds to the wall time as is);
* wall time = worker CPU / cores of the CPU nodes + driver CPU (the CPU nodes are held meanwhile);
* train: steps × batch samples / (samples/s per GPU × GPUs), assuming linear data-parallel scaling;
* eval: eval images / (images/s per GPU), once after training;
* cost: node-hours × the catalogue's $/hour, plus a month of object storage.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

RATES_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "rates.json"

#: Where the prices come from, printed with every plan.
PRICES_SOURCE = (
    "AWS EC2 on-demand list prices, us-east-1, Linux, as published in 2025 (p5.48xlarge after AWS's "
    "June 2025 P5 price cut); S3 Standard $0.023 per GB-month. Not fetched live: check "
    "https://aws.amazon.com/ec2/pricing/on-demand/ before budgeting"
)
S3_USD_PER_GB_MONTH = 0.023
#: Bytes fetched per downloaded image: the originals are larger than the 256-px copies kept (the
#: download benchmark serves COCO photos of ~160 KB); used only to check a node's network.
ORIGINAL_KB = 160


@dataclass(frozen=True)
class Instance:
    """One machine type: cores (vCPUs), memory, GPUs and its on-demand price."""

    name: str
    cores: int
    memory_gb: float
    usd_per_hour: float
    gpus: int = 0
    gpu: str | None = None
    network_gbps: float = 0.0  # AWS's "up to" figure; 0 = unknown


INSTANCES: dict[str, Instance] = {
    i.name: i
    for i in (
        Instance("c7i.16xlarge", cores=64, memory_gb=128, usd_per_hour=2.856, network_gbps=25),
        Instance("m7i.16xlarge", cores=64, memory_gb=256, usd_per_hour=3.2256, network_gbps=25),
        Instance("p5.48xlarge", cores=192, memory_gb=2048, usd_per_hour=55.04, gpus=8, gpu="NVIDIA H100",
                 network_gbps=3200),
        # the machine the project's CPU rates were measured on: for checking the plan against them
        Instance("bench-vm", cores=2, memory_gb=24, usd_per_hour=0.0),
    )
}


@dataclass(frozen=True)
class Cluster:
    """A named cluster shape: CPU nodes for the data stages, GPU nodes for training and eval."""

    name: str
    cpu_instance: str
    cpu_nodes: int
    gpu_instance: str | None = None
    gpu_nodes: int = 0
    about: str = ""

    @property
    def cpu(self) -> Instance:
        return INSTANCES[self.cpu_instance]

    @property
    def gpu(self) -> Instance | None:
        return INSTANCES[self.gpu_instance] if self.gpu_instance else None

    def describe(self) -> str:
        """``64 × c7i.16xlarge (4,096 cores) + 32 × p5.48xlarge (256 NVIDIA H100)``."""
        text = f"{self.cpu_nodes} × {self.cpu_instance} ({self.cpu_nodes * self.cpu.cores:,} cores)"
        if self.gpu is not None and self.gpu_nodes:
            text += f" + {self.gpu_nodes} × {self.gpu_instance} ({self.gpu_nodes * self.gpu.gpus:,} {self.gpu.gpu})"
        return text


CLUSTERS: dict[str, Cluster] = {
    c.name: c
    for c in (
        Cluster("aws-small", "c7i.16xlarge", 4, "p5.48xlarge", 1, "a team's first run: 256 cores, 8 GPUs"),
        Cluster("aws-clip", "c7i.16xlarge", 64, "p5.48xlarge", 32, "CLIP scale: 4,096 cores, 256 GPUs"),
        Cluster("bench", "bench-vm", 1, None, 0, "the 2-core VM the CPU rates were measured on"),
    )
}

#: The data stages in pipeline order, with the rows each reads (see :func:`stage_rows`).
DATA_STAGES = ("vocab", "extract", "match", "balance", "download", "dedup")


@dataclass
class PlanInputs:
    """What the user asks for, and the assumptions that turn it into rows per stage."""

    pairs: int
    candidates: int
    eval_sizes: list[int]
    model: str
    steps: int
    batch: int
    cluster: Cluster
    match_rate: float = 0.5
    download_success: float = 0.7
    dedup_keep: float = 0.95
    #: Candidate pairs per crawled HTML page: extract's rate is per page (None: no extract rate to use).
    pairs_per_page: float | None = None


@dataclass
class StagePlan:
    """One line of the plan; ``measured`` False when the rates file has no rate for the stage."""

    stage: str
    rows: int
    measured: bool = True
    core_hours: float = 0.0
    gpu_hours: float = 0.0
    driver_hours: float = 0.0
    task_mb: float = 0.0
    driver_mb: float = 0.0
    wall_hours: float = 0.0
    usd: float = 0.0
    note: str = ""
    worker_cpu_s: float = 0.0
    driver_cpu_s: float = 0.0


@dataclass
class Plan:
    """The whole plan: stage lines, storage, totals and the assumptions behind them."""

    inputs: PlanInputs
    stages: list[StagePlan]
    storage_gb: float
    storage_usd_month: float
    assumptions: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- inputs
def parse_count(text: str | int, what: str) -> int:
    """``400M``, ``5B``, ``50k``, ``1_000_000`` → an int ≥ 1; ConfigError naming ``what`` otherwise."""
    if isinstance(text, int):
        value = float(text)
    else:
        t = str(text).strip().lower().replace("_", "").replace(",", "")
        scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(t[-1:], 1.0)
        digits = t[:-1] if t[-1:] in ("k", "m", "b", "g") else t
        try:
            value = float(digits) * scale
        except ValueError:
            raise ConfigError(f"{what}: {text!r} is not a count; write e.g. 400M, 5B, 50k or 1000000") from None
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{what}: {text!r} must be at least 1")
    return int(value)


def parse_eval_sizes(text: str) -> list[int]:
    """``50k,10k`` → [50000, 10000]; ``0`` or an empty string → no eval."""
    if not text.strip() or text.strip() == "0":
        return []
    return [parse_count(part, f"--eval (item {i + 1})") for i, part in enumerate(text.split(","))]


def _fraction(value: float, what: str) -> float:
    if not (0 < value <= 1):
        raise ConfigError(f"{what}: {value} must be a fraction in (0, 1]")
    return value


def load_rates(path: str | Path | None = None) -> dict[str, Any]:
    """The rates file as a dict; ConfigError naming the file and how to make it when it is unusable."""
    path = Path(path) if path else RATES_FILE
    if not path.exists():
        raise ConfigError(f"rates file {path} does not exist; run `python benchmarks/scale.py --write-rates` "
                          "or pass --rates FILE")
    try:
        rates = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"rates file {path} is not valid JSON ({exc}); restore it from git") from None
    if not isinstance(rates, dict) or not isinstance(rates.get("stages", {}), dict):
        raise ConfigError(f"rates file {path}: expected an object with a 'stages' object")
    return rates


def make_inputs(
    *,
    pairs: str | int,
    candidates: str | int,
    eval_sizes: str,
    model: str,
    steps: str | int,
    batch: str | int,
    cluster: str,
    rates: dict[str, Any],
    match_rate: float = 0.5,
    download_success: float = 0.7,
    dedup_keep: float = 0.95,
    cpu_nodes: int | None = None,
    gpu_nodes: int | None = None,
    pairs_per_page: float | None = None,
) -> PlanInputs:
    """Validate the command line's values into :class:`PlanInputs` (ConfigError naming the option)."""
    if cluster not in CLUSTERS:
        raise ConfigError(f"--cluster: unknown shape {cluster!r}; choose from {', '.join(CLUSTERS)}")
    shape = CLUSTERS[cluster]
    if cpu_nodes is not None or gpu_nodes is not None:
        if (cpu_nodes is not None and cpu_nodes < 1) or (gpu_nodes is not None and gpu_nodes < 0):
            raise ConfigError("--cpu-nodes must be at least 1 and --gpu-nodes at least 0")
        shape = Cluster(shape.name, shape.cpu_instance, cpu_nodes or shape.cpu_nodes, shape.gpu_instance,
                        shape.gpu_nodes if gpu_nodes is None else gpu_nodes, shape.about + " (nodes overridden)")
    models = rates.get("train", {})
    if model not in models:
        raise ConfigError(f"--model: no training rate for {model!r} in the rates file; measured: {', '.join(models)}")
    inputs = PlanInputs(
        pairs=parse_count(pairs, "--pairs"),
        candidates=parse_count(candidates, "--candidates"),
        eval_sizes=parse_eval_sizes(eval_sizes),
        model=model,
        steps=parse_count(steps, "--steps"),
        batch=parse_count(batch, "--batch"),
        cluster=shape,
        match_rate=_fraction(match_rate, "--match-rate"),
        download_success=_fraction(download_success, "--download-success"),
        dedup_keep=_fraction(dedup_keep, "--dedup-keep"),
        pairs_per_page=_pairs_per_page(pairs_per_page, rates),
    )
    needed = math.ceil(inputs.pairs / (inputs.download_success * inputs.dedup_keep))
    if inputs.candidates * inputs.match_rate < needed:
        least = math.ceil(needed / inputs.match_rate)
        raise ConfigError(
            f"--candidates: {inputs.candidates:,} candidates × match rate {inputs.match_rate} give fewer matched "
            f"rows than the {needed:,} downloads that {inputs.pairs:,} pairs need (download success "
            f"{inputs.download_success}, dedup keeps {inputs.dedup_keep}); give at least {least:,} candidates "
            "or fewer --pairs"
        )
    if shape.gpu_nodes and shape.gpu is None:
        raise ConfigError(f"--gpu-nodes: shape {shape.name!r} has no GPU instance type")
    return inputs


def _pairs_per_page(given: float | None, rates: dict[str, Any]) -> float | None:
    """``--pairs-per-page``, else the figure measured on real pages with extract's rate (None without one)."""
    if given is not None:
        if not given > 0:
            raise ConfigError(f"--pairs-per-page: {given} is not a positive number of candidate pairs per page")
        return float(given)
    measured = rates.get("stages", {}).get("extract", {}).get("pairs_per_page")
    return float(measured) if measured else None


# ------------------------------------------------------------------------------------- the plan
def stage_rows(inputs: PlanInputs) -> dict[str, int]:
    """Rows each data stage reads: candidates → matched → balanced (= downloads) → downloaded."""
    downloads = math.ceil(inputs.pairs / (inputs.download_success * inputs.dedup_keep))
    return {
        "vocab": 0,
        # extract's rate is per crawled HTML page: the pages that hold the candidates
        "extract": math.ceil(inputs.candidates / inputs.pairs_per_page) if inputs.pairs_per_page else inputs.candidates,
        "match": inputs.candidates,
        "balance": math.ceil(inputs.candidates * inputs.match_rate),
        "download": downloads,
        "dedup": math.ceil(downloads * inputs.download_success),
    }


def row_stage_cpu(rate: dict[str, Any], rows: int, cores: int) -> tuple[float, float]:
    """(worker, driver) CPU seconds of a row stage for ``rows`` rows on ``cores`` cores.

    The fixed worker part was measured with ``bench_workers`` workers; each of ``cores`` workers pays
    its share once (e.g. building the matcher), so it grows with the cluster, not with the rows.
    """
    per_worker = float(rate.get("worker_cpu_fixed_s", 0.0)) / max(int(rate.get("bench_workers", 1)), 1)
    worker = float(rate["worker_cpu_us_per_row"]) * 1e-6 * rows + max(per_worker, 0.0) * min(cores, _tasks(rows))
    driver = float(rate.get("driver_cpu_us_per_row", 0.0)) * 1e-6 * rows + max(
        float(rate.get("driver_cpu_fixed_s", 0.0)), 0.0)
    return max(worker, 0.0), max(driver, 0.0)


#: Rows per task, as in the scale benchmark's pool parts: it only decides how many workers pay the fixed cost.
ROWS_PER_TASK = 250_000


def _tasks(rows: int) -> int:
    return max(1, math.ceil(rows / ROWS_PER_TASK))


def _driver_mb(rate: dict[str, Any], rows: int) -> float:
    """The driver's peak at ``rows``: the measured peak, and if it was not flat (±10 % over the benchmark's
    sizes) grown by its measured slope beyond the largest size."""
    peak = float(rate.get("driver_peak_rss_mb", 0.0))
    if abs(float(rate.get("driver_rss_growth", 1.0))) <= 0.10:
        return peak
    slope = max(float(rate.get("driver_rss_mb_per_million_rows", 0.0)), 0.0)
    beyond = max(rows - int(rate.get("largest_rows", rows)), 0)
    return peak + slope * beyond / 1e6


def make_plan(inputs: PlanInputs, rates: dict[str, Any]) -> Plan:
    """The plan for ``inputs`` from ``rates`` (see the module docstring for the model)."""
    shape = inputs.cluster
    cores = shape.cpu_nodes * shape.cpu.cores
    cpu_price = shape.cpu_nodes * shape.cpu.usd_per_hour
    rows = stage_rows(inputs)
    lines: list[StagePlan] = []
    sources: list[str] = []
    stage_rates = rates.get("stages", {})
    for name in DATA_STAGES:
        n = rows[name]
        if name == "download":
            lines.append(_download_line(rates.get("download"), n, cores, cpu_price, shape))
            if "download" in rates:
                sources.append(_source_line("download", rates["download"]))
            continue
        rate = stage_rates.get(name)
        if rate is None:
            lines.append(StagePlan(name, n, measured=False, note="not measured: no rate in the rates file"))
            continue
        sources.append(_source_line(name, rate))
        worker, driver = row_stage_cpu(rate, n, cores)
        if name == "dedup":  # the pool joins are the measured rate; each shard's eval search is on top
            worker += _eval_search_cpu(rates.get("dedup_eval_search"), n, inputs.eval_sizes)
        wall = (worker / cores + driver) / 3600
        line = StagePlan(
            name, n, core_hours=worker / 3600, driver_hours=driver / 3600,
            task_mb=float(rate.get("worker_peak_rss_mb", 0.0)), driver_mb=_driver_mb(rate, n),
            wall_hours=wall, usd=wall * cpu_price, worker_cpu_s=worker, driver_cpu_s=driver,
        )
        if name == "extract" and inputs.pairs_per_page:
            line.note = "rows are crawled HTML pages"
        per_core_gb = shape.cpu.memory_gb * 1024 / shape.cpu.cores
        if line.task_mb > per_core_gb:
            line.note = f"a task needs {line.task_mb:,.0f} MB > {per_core_gb:,.0f} MB per core: run fewer per node"
        lines.append(line)
    lines.append(_train_line(inputs, rates, shape))
    sources.append(_source_line(f"train {inputs.model}", rates["train"][inputs.model]))
    lines.append(_eval_line(inputs, rates, shape))
    if "eval" in rates:
        sources.append(_source_line("eval", rates["eval"]))
    stored = rows["dedup"] * inputs.dedup_keep
    per_sample = float(rates.get("storage", {}).get("bytes_per_sample", 0.0))
    pool_bytes = float(stage_rates.get("match", {}).get("pool_bytes_per_row", 0.0))
    storage_gb = (stored * per_sample + inputs.candidates * pool_bytes) / 1e9
    if "storage" in rates:
        sources.append(_source_line("storage", rates["storage"]))
    if "dedup_eval_search" in rates and inputs.eval_sizes:
        sources.append(_source_line("dedup eval search", rates["dedup_eval_search"]))
    gpu_note = ""
    if shape.gpu is not None and rates["train"][inputs.model].get("gpu") != shape.gpu.gpu:
        gpu_note = (f"; training rate measured on {rates['train'][inputs.model].get('gpu')}, applied to "
                    f"{shape.gpu.gpu} as is (same dense bf16 peak; the measured batch fits in 80 GB)")
    assumptions = [
        f"{inputs.match_rate:.0%} of candidates match the vocabulary (--match-rate); balancing keeps the "
        f"{rows['download']:,} rows to download",
        f"{inputs.download_success:.0%} of downloads succeed (--download-success); dedup keeps "
        f"{inputs.dedup_keep:.0%} (--dedup-keep): {rows['dedup'] * inputs.dedup_keep:,.0f} pairs stored",
        *([f"{inputs.pairs_per_page:g} candidate pairs (<img> with alt and src) per crawled HTML page "
           f"(--pairs-per-page; extract reads {rows['extract']:,} pages)"] if inputs.pairs_per_page else []),
        "1 vCPU = 1 core of the benchmark VM; stages run one after another, each using every CPU node",
        "data-parallel training scales linearly with GPUs" + gpu_note,
        f"eval once after training on {sum(inputs.eval_sizes):,} images",
        _network_assumption(rates.get("download"), shape),
        "dedup: the pool's joins and decisions at the rate scale.py measured, plus each shard's overlap search "
        "against the eval sets' views, scaled linearly with the eval sets' size from one measured shard task",
        "the driver's CPU is serial and adds to each stage's wall time; its memory is the measured peak "
        "(grown at its measured slope past the largest benchmark size)",
        f"prices: {PRICES_SOURCE}",
        f"storage: stored samples × {per_sample / 1e3:.0f} KB + pool rows × {pool_bytes:.0f} B, "
        "kept one month",
    ]
    return Plan(inputs, lines, storage_gb, storage_gb * S3_USD_PER_GB_MONTH, assumptions, sources)


def _network_assumption(rate: dict[str, Any] | None, shape: Cluster) -> str:
    """Download is measured CPU-bound on loopback; whether a node's network keeps up at that rate."""
    if rate is None:
        return "download: no rate, so no network check"
    gbps = float(rate["images_per_s_per_core"]) * shape.cpu.cores * ORIGINAL_KB * 8e3 / 1e9
    have = shape.cpu.network_gbps
    verdict = (f"within its {have:g} Gbit/s" if gbps <= have else f"MORE than its {have:g} Gbit/s: download "
               "is network-bound there, slower than planned") if have else "network of this node type unknown"
    return (f"download is CPU-bound as measured on loopback: {float(rate['images_per_s_per_core']):g} images/s "
            f"per core × {ORIGINAL_KB} KB originals = {gbps:.1f} Gbit/s per {shape.cpu_instance}, {verdict}")


def _download_line(rate: dict[str, Any] | None, n: int, cores: int, cpu_price: float, shape: Cluster) -> StagePlan:
    if rate is None:
        return StagePlan("download", n, measured=False, note="not measured: no rate in the rates file")
    core_s = n / float(rate["images_per_s_per_core"])
    wall = core_s / cores / 3600
    return StagePlan("download", n, core_hours=core_s / 3600, task_mb=float(rate.get("process_peak_rss_mb", 0.0)),
                     wall_hours=wall, usd=wall * cpu_price, worker_cpu_s=core_s)


def _train_line(inputs: PlanInputs, rates: dict[str, Any], shape: Cluster) -> StagePlan:
    rate = rates["train"][inputs.model]
    samples = inputs.steps * inputs.batch
    gpu_h = samples / float(rate["samples_per_s_per_gpu"]) / 3600
    gpus = shape.gpu_nodes * (shape.gpu.gpus if shape.gpu else 0)
    line = StagePlan("train", samples, gpu_hours=gpu_h, task_mb=float(rate.get("peak_gpu_gib", 0)) * 1024)
    if gpus:
        line.wall_hours = gpu_h / gpus
        line.usd = line.wall_hours * shape.gpu_nodes * shape.gpu.usd_per_hour
        per_gpu = inputs.batch / gpus
        line.note = f"{inputs.steps * inputs.batch / inputs.pairs:.1f} epochs; {per_gpu:,.0f} samples per GPU per step"
        if per_gpu > float(rate.get("batch_per_gpu", per_gpu)):
            line.note += (f" (measured at {rate['batch_per_gpu']}: more may not fit in GPU memory; "
                          "use gradient accumulation or more GPUs)")
    else:
        line.note = "no GPU nodes in this cluster shape: GPU-hours only"
    return line


def _eval_search_cpu(rate: dict[str, Any] | None, images: int, eval_sizes: list[int]) -> float:
    """Worker CPU seconds of dedup's overlap search: every training view probes the eval sets' view index."""
    if not rate or not eval_sizes:
        return 0.0
    index_views = sum(eval_sizes) * float(rate["eval_views_per_image"])
    per_query = float(rate["us_per_query_per_million_eval_views"]) * index_views / 1e6
    return images * float(rate["train_views_per_image"]) * per_query * 1e-6


def _eval_line(inputs: PlanInputs, rates: dict[str, Any], shape: Cluster) -> StagePlan:
    images = sum(inputs.eval_sizes)
    rate = rates.get("eval")
    if rate is None:
        return StagePlan("eval", images, measured=False, note="not measured: no rate in the rates file")
    gpu_h = images / float(rate["images_per_s_per_gpu"]) / 3600
    line = StagePlan("eval", images, gpu_hours=gpu_h)
    gpus = shape.gpu_nodes * (shape.gpu.gpus if shape.gpu else 0)
    if gpus:  # eval sets are small: one node's GPUs, its cost is that node's
        on = min(gpus, shape.gpu.gpus)
        line.wall_hours = gpu_h / on
        line.usd = line.wall_hours * shape.gpu.usd_per_hour
    return line


def _source_line(name: str, rate: dict[str, Any]) -> str:
    src = rate.get("source", {})
    bits = [src.get("benchmark", "?"), src.get("date", "?")]
    if src.get("commit"):
        bits.append(f"at {src['commit']}")
    if src.get("machine"):
        bits.append(src["machine"])
    return f"{name}: " + ", ".join(str(b) for b in bits)


# ------------------------------------------------------------------------------------- output
def _h(hours: float) -> str:
    if hours == 0:
        return "-"
    return f"{hours:,.1f}" if hours >= 1 else f"{hours:.2g}"  # two significant figures below an hour


def _mb(mb: float) -> str:
    return f"{mb:,.0f}" if mb else "-"


def render(plan: Plan) -> str:
    """The printed plan: a line per stage, totals, storage, assumptions and where each rate comes from."""
    i = plan.inputs
    shape = i.cluster
    out = [
        f"webclip plan: {i.pairs:,} pairs from {i.candidates:,} candidates; {i.model}, {i.steps:,} steps × batch "
        f"{i.batch:,}; eval sets {', '.join(f'{n:,}' for n in i.eval_sizes) or 'none'}",
        f"cluster {shape.name}: {shape.describe()}" + (f" — {shape.about}" if shape.about else ""),
        "",
        f"{'stage':<9}{'rows':>16}{'core-h':>11}{'GPU-h':>10}{'driver h':>10}{'MB/task':>9}{'driver MB':>10}"
        f"{'wall h':>9}{'cost $':>11}",
    ]
    for s in plan.stages:
        if not s.measured:
            out.append(f"{s.stage:<9}{s.rows:>16,}   {s.note}")
            continue
        out.append(
            f"{s.stage:<9}{(f'{s.rows:,}' if s.rows else '-'):>16}{_h(s.core_hours):>11}{_h(s.gpu_hours):>10}{_h(s.driver_hours):>10}"
            f"{_mb(s.task_mb):>9}{_mb(s.driver_mb):>10}{_h(s.wall_hours):>9}{s.usd:>11,.0f}"
            + (f"  {s.note}" if s.note else "")
        )
    measured = [s for s in plan.stages if s.measured]
    total_usd = sum(s.usd for s in measured) + plan.storage_usd_month
    out += [
        f"{'total':<9}{'':>16}{_h(sum(s.core_hours for s in measured)):>11}{_h(sum(s.gpu_hours for s in measured)):>10}"
        f"{_h(sum(s.driver_hours for s in measured)):>10}{'':>9}{'':>10}{_h(sum(s.wall_hours for s in measured)):>9}"
        f"{total_usd:>11,.0f}",
        f"storage: {plan.storage_gb:,.0f} GB (${plan.storage_usd_month:,.0f} per month, in the total)",
    ]
    missing = [s.stage for s in plan.stages if not s.measured]
    if missing:
        out.append(f"not in the totals (no measured rate): {', '.join(missing)}")
    out += ["", "assumptions:"] + [f"  - {a}" for a in plan.assumptions]
    out += ["", "rates (benchmarks/rates.json):"] + [f"  - {s}" for s in plan.sources]
    return "\n".join(out)
