"""README "From laptop to cluster", run as written, and the three starter configs of infra/configs/ end to end.

The README's commands are read from that section and run in bash, in order, from a fresh copy of the
checkout, against a real token-authenticated Ray head on loopback whose dashboard is on the README's
127.0.0.1:8265 (`ray up`, `ray dashboard` and `ray down` need AWS: exempt in
tests/test_readme_commands.py). The one substitution: the run URL `s3://my-bucket/runs/wit` becomes a
local folder (no bucket here). The crawl is the starter `infra/configs/crawl.yaml` with its
placeholders filled as a user would, at tiny sizes: a Common Crawl mirror in miniature on a loopback
HTTP server (a `wat.paths.gz` and the WAT files it lists, whose images are real COCO photos), a small
vocabulary, a folder eval set sharing three photos with the crawl. Then `infra/configs/train.yaml`
(tiny model, two steps) and `infra/configs/eval.yaml` (eval + audit) run on that run.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from warcio.warcwriter import WARCWriter

from demo.server import serve
from pipeline.rundir import RunDir
from tests.ray_cluster import free_port, ray_head

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SECTION = "### From laptop to cluster"
BUCKET_RUN = "s3://my-bucket/runs/wit"
DASHBOARD_PORT = 8265  # the README's --address http://127.0.0.1:8265
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
#: README commands of the section this file does not run (AWS), with the step that stands in for them.
NOT_HERE = {"bash infra/ray/iam/create-profiles.sh my-bucket", "ray up -y infra/ray/cluster.yaml",
            "ray dashboard infra/ray/cluster.yaml", "ray down -y infra/ray/cluster.yaml"}
#: The checkout's parts a job needs (a fresh clone's, without .git, .venv, runs).
CHECKOUT = ("crawl", "pipeline", "dedup", "train", "eval", "demo", "infra", "pyproject.toml", "README.md")
PHOTOS = 21  # crawl: photos 0-11; eval set: photos 9-20 (9, 10, 11 in both)


def readme_section(title: str = SECTION) -> list[str]:
    """The bash blocks of README section ``title``, in order, each as its text."""
    text = README.read_text(encoding="utf-8")
    start = text.index(title + "\n")
    end = min((i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i > 0),
              default=len(text))
    return FENCE.findall(text[start:end])


def _commands(block: str) -> list[str]:
    return [ln for ln in (line.strip() for line in block.replace("\\\n", " ").splitlines()) if ln]


@contextlib.contextmanager
def _dashboard_port() -> Iterator[None]:
    """Hold 8265 for this test: one at a time on this machine (a lock), and skip if someone else binds it."""
    with open("/tmp/webclip-test-8265.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", DASHBOARD_PORT)) == 0:
                pytest.skip(f"127.0.0.1:{DASHBOARD_PORT} (the README's dashboard address) is in use by another process")
        yield


def _wat(path: Path, port: int, names: list[str]) -> None:
    """A WAT file as Common Crawl writes them: one metadata record per page, its <img> links with alt."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for i, name in enumerate(names):
            page = f"http://127.0.0.1:{port}/pages/{path.stem}-{i}.html"
            links = [{"path": "IMG@/src", "url": f"/img/{name}", "alt": f"a photo of a red bus, number {i}"},
                     {"path": "A@/href", "url": "/elsewhere", "text": "a link"}]
            meta = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": page},
                                 "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": links}}}}}
            w.write_record(w.create_warc_record(page, "metadata", payload=io.BytesIO(json.dumps(meta).encode()),
                                                warc_content_type="application/json"))


def _mini_commoncrawl(shared_data: Path, site: Path, port: int) -> list[Path]:
    """crawl-data/CC-MAIN-2099-01/wat.paths.gz listing 3 WAT files (12 image links), and the images."""
    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:PHOTOS]
    (site / "img").mkdir(parents=True)
    for p in photos:
        (site / "img" / p.name).symlink_to(p)
    crawl = "crawl-data/CC-MAIN-2099-01"
    wat_dir = site / crawl / "segments" / "0" / "wat"
    wat_dir.mkdir(parents=True)
    listed = []
    for k in range(3):
        _wat(wat_dir / f"CC-MAIN-{k}.warc.wat.gz", port, [p.name for p in photos[4 * k:4 * k + 4]])
        listed.append(f"{crawl}/segments/0/wat/CC-MAIN-{k}.warc.wat.gz")
    with gzip.open(site / crawl / "wat.paths.gz", "wt") as fh:
        fh.write("\n".join(listed) + "\n")
    return photos


def _eval_folder(photos: list[Path], root: Path) -> Path:
    """A folder eval set of two classes, six photos each; photos 9-11 were crawled too (overlaps)."""
    for c, cls in enumerate(("bus", "street")):
        (root / cls).mkdir(parents=True)
        for p in photos[9 + 6 * c:15 + 6 * c]:
            (root / cls / p.name).symlink_to(p)
    return root


def _fill_placeholders(crawl_yaml: Path, port: int, eval_dir: Path, vocab: Path) -> None:
    """What the user does to the copied starter: replace each <PLACEHOLDER> (and, here, shrink it)."""
    cfg = yaml.safe_load(crawl_yaml.read_text())
    cfg["evalsets"] = [{"name": "tiny", "kind": "folder", "path": str(eval_dir), "templates": "photo"}]
    cfg["vocab"] = {"sources": ["file"], "files": [str(vocab)]}
    wat = cfg["extract"]["inputs"][0]
    wat["paths_list"] = f"http://127.0.0.1:{port}/crawl-data/CC-MAIN-2099-01/wat.paths.gz"
    wat["prefix"] = f"http://127.0.0.1:{port}/"
    cfg["download"].update(contact_url="https://example.org/webclip-test", image_size=64, samples_per_shard=5,
                           thread_count=4, timeout=5, allow_addresses=["127.0.0.1/32"])
    crawl_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _bash(commands: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _client_env(home: Path, checkout: Path) -> dict[str, str]:
    """A fresh shell's environment on the laptop: webclip's venv on PATH, no Ray auth variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", NO_ALBUMENTATIONS_UPDATE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(checkout))  # `webclip` is this checkout's code
    return env


@pytest.fixture(scope="module")
def laptop_to_cluster(tmp_path_factory, shared_data):
    """Every README command of the section run in order; yields what later tests inspect."""
    tmp = tmp_path_factory.mktemp("l2c")
    checkout = tmp / "webclip"
    checkout.mkdir()
    for name in CHECKOUT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, checkout / name, ignore=shutil.ignore_patterns("__pycache__", ".tmp-*"))
        else:
            shutil.copy(src, checkout / name)
    run_dir = tmp / "bucket" / "runs" / "wit"
    port = free_port()
    photos = _mini_commoncrawl(shared_data, tmp / "site", port)
    eval_dir = _eval_folder(photos, tmp / "evalsets" / "tiny")
    vocab = tmp / "vocab.txt"
    vocab.write_text("red bus\nphoto\ncat\n")
    home = tmp / "home"
    env = _client_env(home, checkout)
    blocks = [_commands(b) for b in readme_section()]
    ran: dict[str, subprocess.CompletedProcess] = {}

    def run(block: list[str], expect: int = 0, retry_while: str | None = None) -> subprocess.CompletedProcess:
        todo = [c.replace(BUCKET_RUN, str(run_dir)) for c in block if c not in NOT_HERE]
        for _ in range(40):
            out = _bash(todo, checkout, env)
            if not (retry_while and retry_while in out.stdout + out.stderr):
                break
            time.sleep(3)  # the head's job agent is still starting
        assert out.returncode == expect, f"{todo} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        ran.update({c: out for c in block})
        return out

    iam, config, up, submit, status, down = blocks
    assert all(c in NOT_HERE for c in iam + down)
    # 2. the starter config: its placeholders are listed (exit 2, nothing written), then filled
    missing = run(config, expect=2)
    assert "crawl.yaml: 5 placeholder(s) not filled in" in missing.stderr, missing.stderr  # run: is --run
    for key in ("evalsets.0.path", "vocab.wikipedia.dumps.0", "vocab.pageviews.0", "download.contact_url"):
        assert f"  {key} = " in missing.stderr
    assert not run_dir.exists()
    _fill_placeholders(checkout / "crawl.yaml", port, eval_dir, vocab)
    resolved = yaml.safe_load(run([c for c in config if c.startswith("webclip ")]).stdout)
    assert resolved["run"] == str(run_dir) and resolved["balance"]["t"] == 20000
    with _dashboard_port(), serve(tmp / "site", port):
        # 3. `ray get-auth-token --generate` as written; `ray up` is a head started here, on 127.0.0.1:8265
        run([c for c in up if c.startswith("ray get-auth-token")])
        token = (home / ".ray" / "auth_token").read_text().strip()
        with ray_head(tmp, num_cpus=2, dashboard_port=DASHBOARD_PORT) as head:
            assert head.env["HOME"] == str(home)
            assert (home / ".ray" / "auth_token").read_text().strip() == head.token
            # 4. the submission exactly as written (after `export RAY_AUTH_MODE=token`)
            job = run(submit, retry_while="No available agent")
            # 5. status
            state = run(status).stdout
    return {"run": RunDir(str(run_dir)), "job": job.stdout + job.stderr, "status": state, "ran": ran,
            "photos": photos, "eval_dir": eval_dir, "tmp": tmp, "token_generated": bool(token)}


@pytest.mark.slow
def test_readme_laptop_to_cluster_lines_run_as_written(laptop_to_cluster):
    out = laptop_to_cluster
    assert "succeeded" in out["job"], out["job"][-3000:]
    assert "crawl: done" in out["job"]
    assert "Token authentication is enabled" not in out["job"]
    assert "\r" not in out["job"]  # no tqdm redraws in the job log: plain progress lines
    assert re.search(r"^\[download\] tasks \d+/\d+ \(100%\)", out["job"], re.M), out["job"][-3000:]
    for stage in ("vocab", "extract", "match", "balance", "download", "dedup"):
        assert re.search(rf"^  {stage}\s+done\b", out["status"], re.M), out["status"]
    ran = {c for c in out["ran"]}
    every = {c for b in readme_section() for c in _commands(b)}
    assert every - ran == NOT_HERE  # everything else in the section ran


@pytest.mark.slow
def test_the_crawl_config_made_shards_from_the_wat_paths_list(laptop_to_cluster):
    run = laptop_to_cluster["run"]
    extract = run.read_json("stats/extract.json")
    assert extract["counts"]["files"] == 3 and extract["counts"]["out"] == 12  # 3 listed WATs, 12 img links
    curated = sorted(r["uid"] for p in run.glob("curated/part-*.parquet") for r in run.read_parquet(p).to_pylist())
    rows = [r for p in run.glob("shards/*.parquet") for r in run.read_parquet(p).to_pylist()]
    assert len(curated) == 12 and sorted(r["uid"] for r in rows) == curated  # each uid in exactly one row
    assert all(r["status"] == "success" for r in rows)
    markers = [run.read_marker("download", t) for t in run.done_tasks("download") if t != "_stage"]
    assert markers and all("node" in m for m in markers)
    overlaps = run.read_parquet("dedup/overlaps.parquet").to_pylist()
    planted = {p.name for p in laptop_to_cluster["photos"][9:12]}  # in the crawl and in the eval set
    found = {r["eval_id"].rsplit("/", 1)[-1] for r in overlaps if r["confirmed"]}
    # dedup's recall on 64-px centre crops of these photos is dedup's to test; here: it ran on the
    # crawl's shards against the configured eval set and confirmed only true overlaps
    assert found and found <= planted, (planted, found)


def _webclip(*args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=900, env=dict(os.environ, PYTHONPATH=str(REPO), WEBCLIP_PROGRESS_SECONDS="5"))
    return out.returncode, out.stdout + out.stderr


@pytest.mark.slow
def test_train_and_eval_configs_run_on_the_crawl(laptop_to_cluster):
    """infra/configs/train.yaml then eval.yaml on the crawl's run, placeholders filled, at tiny sizes."""
    run = laptop_to_cluster["run"]
    tiny_set = f"[{{name: tiny, kind: folder, path: '{laptop_to_cluster['eval_dir']}', templates: photo}}]"
    code, log = _webclip(
        "train", "--config", "infra/configs/train.yaml", "--run", run.url, "--set", f"evalsets={tiny_set}",
        # tiny sizes: the ViT-B/16 shape is checked in tests/test_starter_configs.py
        "--set", "train.model=tiny-vit", "--set", "train.steps=2", "--set", "train.batch_size=4",
        "--set", "train.grad_accum=1", "--set", "train.num_procs=1", "--set", "train.precision=fp32",
        "--set", "train.deepspeed_config=infra/deepspeed/zero2_fp32.json", "--set", "train.vocab_size=600",
        "--set", "train.warmup=1", "--set", "train.checkpoint_every=2", "--set", "train.log_every=1",
        "--set", "train.eval_every=2", "--set", "train.workers=1", "--set", "train.grad_checkpointing=false",
    )
    assert code == 0, log[-4000:]
    assert (Path(run.url) / "train" / "export" / "model.pt").is_file()
    captions = REPO.parent / "shared" / "data" / "photos" / "coco_mini" / "annotations" / "captions_val2017.json"
    code, log = _webclip(
        "run", "--config", "infra/configs/eval.yaml", "--run", run.url, "--set", f"evalsets={tiny_set}",
        "--set", f"eval.retrieval=[{{name: coco-mini, kind: coco, path: '{captions}', limit: 8}}]",
        "--set", "eval.linear_probe=[{train: tiny}]", "--set", "eval.device=cpu", "--set", "eval.precision=fp32",
        "--set", "eval.batch_size=8",
    )
    assert code == 0, log[-4000:]
    results = run.read_parquet("eval/results.parquet").to_pylist()
    assert {r["task"] for r in results} == {"zeroshot", "retrieval", "linear_probe"}
    overlap = run.read_parquet("eval/overlap.parquet").to_pylist()
    confirmed = {r["eval_id"] for r in run.read_parquet("dedup/overlaps.parquet").to_pylist() if r["confirmed"]}
    assert any(r["dataset"] == "tiny" and r["n_overlap"] == len(confirmed) > 0 for r in overlap), overlap
    assert (Path(run.url) / "audit.duckdb").is_file()


def test_the_section_names_its_commands():
    """The section holds the six steps in order (cheap, no cluster: runs in the quick suite)."""
    blocks = [_commands(b) for b in readme_section()]
    assert [b[0].split()[0:2] for b in blocks] == [
        ["bash", "infra/ray/iam/create-profiles.sh"], ["cp", "infra/configs/crawl.yaml"],
        ["ray", "get-auth-token"], ["export", "RAY_AUTH_MODE=token"], ["webclip", "status"], ["ray", "down"]]
    submit = shlex.split(" ".join(blocks[3][1:]))
    assert submit[:6] == ["ray", "job", "submit", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}", "--working-dir"]
