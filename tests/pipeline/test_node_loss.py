"""Losing a whole Ray node mid-stage, on a three-node cluster (``ray.cluster_utils.Cluster``, tests/three_nodes.py):
a head (1 CPU, no ``download``) and two worker nodes (1 CPU and 1 ``download`` each), all on 127.0.0.1.

A worker node is killed (raylet, object store and workers at once) while the download stage, and
separately the match stage, has tasks running and pending; the stage finishes on the surviving nodes,
and its outputs are the same bytes as an uninterrupted run of the same inputs on the same cluster —
every curated uid in exactly one shard parquet row. Then the same with the crawl submitted by
``ray job submit`` (its driver runs on the head, which survives).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.rundir import RunDir
from tests.crawl.http_fixtures import ImageServer, write_curated
from tests.ray_cluster import RAY, free_port

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "three_nodes.py"
DELAY = 0.6  # seconds per image: a shard of 3 images takes ~2 s, so a node dies mid-shard
PARTS, ROWS = 16, 150_000  # pool parts for the match test: about a second of matching each


class ThreeNodes:
    """The helper process's cluster: its state, and commands to kill or add a worker node."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.state_file = tmp / "cluster.json"
        home = tmp / "home"
        home.mkdir()
        # A short private Ray temp dir: socket paths must stay short, and no other Ray here may see it.
        ray_tmp = Path(f"/tmp/rn{os.getpid()}")
        ray_tmp.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.ray_tmp = ray_tmp
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: every Ray process (drivers too) binds to 127.0.0.1
        self.env.update(HOME=str(home), RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0",
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                        NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="token",
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env["RAY_AUTH_TOKEN"] = subprocess.run(
            [RAY, "get-auth-token", "--generate"], env=self.env, check=True, capture_output=True, text=True,
            timeout=60).stdout.strip().splitlines()[-1]
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), str(self.state_file), str(free_port())], env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(tmp / "cluster.log").open("w"), text=True,
            start_new_session=True)
        self._expect("ready")

    def _expect(self, word: str) -> str:
        line = self.proc.stdout.readline()
        assert line.startswith(word), f"cluster helper said {line!r}; see {self.tmp / 'cluster.log'}"
        return line.split()[-1]

    @property
    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def kill(self, node_id: str) -> None:
        self.proc.stdin.write(f"kill {node_id}\n")
        self.proc.stdin.flush()
        self._expect("killed")

    def add(self) -> str:
        self.proc.stdin.write("add\n")
        self.proc.stdin.flush()
        return self._expect("added")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def driver_env(self) -> dict[str, str]:
        return dict(self.env, RAY_ADDRESS=self.state["address"], WEBCLIP_PROGRESS_SECONDS="2")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    cluster = ThreeNodes(tmp_path_factory.mktemp("three-nodes"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def server(shared_data):
    photos = sorted((shared_data / "photos" / "coco_mini" / "val2017").glob("*.jpg"))[:4]
    srv = ImageServer(photos)
    yield srv
    srv.close()


def _crawl(nodes: ThreeNodes, cfg: Path, run_dir: Path, stage: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "crawl" / "main.py"), "--config", str(cfg), "--run", str(run_dir),
         "--stages", stage], env=nodes.driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _markers(run_dir: Path, stage: str) -> list[dict]:
    folder = run_dir / "_done" / stage
    if not folder.is_dir():
        return []
    out = []
    for f in folder.iterdir():
        if f.name != "_stage" and not f.name.startswith(".tmp-"):
            with contextlib.suppress(ValueError, OSError):
                out.append(json.loads(f.read_text()))
    return out


def _kill_a_worker_node_mid_stage(nodes: ThreeNodes, run_dir: Path, stage: str, proc: subprocess.Popen,
                                  busy: Callable[[], bool] | None = None) -> tuple[str, int]:
    """Once a task of the stage has finished on a worker node, and then ``busy()`` says that node has
    taken up its next task, kill that node; returns its id and how many tasks were done just before."""
    deadline = time.monotonic() + 300
    node = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the stage ended before a node could be killed:\n" + proc.stdout.read()
        if node is None:
            workers = set(nodes.state["workers"])
            ran = [m["node"] for m in _markers(run_dir, stage) if m.get("node") in workers]
            node = ran[0] if ran else None
        if node is not None and (busy is None or busy()):
            done = len(_markers(run_dir, stage))
            nodes.kill(node)
            return node, done
        time.sleep(0.02)
    raise AssertionError(f"no {stage} task finished on a worker node within 300 s")


def _fresh_shard_started(server: ImageServer, since: int, per_shard: int = 3) -> Callable[[], bool]:
    """True once a shard none of whose images had been asked for at the first call starts: the node that
    just finished one has begun its next shard (its first image is in flight, DELAY seconds long)."""
    seen: set[int] = set()
    first = True

    def shards(requests: list) -> set[int]:
        return {int(path.rsplit("i=", 1)[1]) // per_shard for path, _, _ in requests if "i=" in path}

    def check() -> bool:
        nonlocal first, seen
        now = shards(server.requests[since:])
        if first:
            seen, first = now, False
            return False
        return bool(now - seen)

    return check


def _a_moment_later(seconds: float) -> Callable[[], bool]:
    """True ``seconds`` after its first call: the node that just finished a task has taken its next one
    (a match task here runs for about a second, so the kill lands inside it)."""
    start: list[float] = []

    def check() -> bool:
        if not start:
            start.append(time.monotonic())
        return time.monotonic() - start[0] >= seconds

    return check


def _task_attempts(nodes: ThreeNodes, name: str) -> list[dict]:
    """Every attempt of the tasks called ``name`` the cluster knows, from `ray list tasks`."""
    out = subprocess.run([RAY, "list", "tasks", "--address", nodes.state["address"], "--filter", f"name={name}",
                          "--detail", "--format", "json", "--limit", "10000"],
                         env=nodes.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout[out.stdout.index("["):])


def _download_config(tmp: Path) -> Path:
    cfg = tmp / "crawl.yaml"
    cfg.write_text(yaml.safe_dump({
        "download": {"allow_addresses": ["127.0.0.1/32"], "image_size": 32, "samples_per_shard": 3,
                     "thread_count": 1, "timeout": 20},
        "ray": {"task_retries": 3},
    }))
    return cfg


def _curated(server: ImageServer, n: int = 24) -> list[dict]:
    return [{"uid": f"uid-{i:03d}",
             "url": server.url(f"/slow/{DELAY}/{server.names[i % len(server.names)]}?i={i}")
             if i % 9 != 4 else server.url(f"/status/404?i={i}")} for i in range(n)]


def _shard_bytes(run_dir: Path) -> dict[str, object]:
    """Each shard's parquet bytes and its tar members' (name, sha256) (tar headers hold mtimes)."""
    out: dict[str, object] = {}
    for p in sorted((run_dir / "shards").iterdir()):
        if p.suffix == ".parquet":
            out[p.name] = sha256(p.read_bytes()).hexdigest()
        elif p.suffix == ".tar":
            with tarfile.open(fileobj=io.BytesIO(p.read_bytes())) as tar:
                out[p.name] = [(m.name, sha256(tar.extractfile(m).read()).hexdigest()) for m in tar if m.isreg()]
    return out


def _uids_once(run_dir: Path, rows: list[dict]) -> None:
    run = RunDir(str(run_dir))
    uids = [u for p in run.glob("shards/*.parquet") for u in run.read_parquet(p, columns=["uid"])["uid"].to_pylist()]
    assert sorted(uids) == sorted(r["uid"] for r in rows)  # every curated uid in exactly one row


def _download_reference(tmp: Path, nodes: ThreeNodes, server: ImageServer, rows: list[dict]) -> Path:
    ref = tmp / "reference"
    write_curated(ref, rows)
    proc = _crawl(nodes, _download_config(tmp), ref, "download")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return ref


def _replace_lost_node(nodes: ThreeNodes) -> None:
    if len(nodes.state["workers"]) < 2:
        nodes.add()


@pytest.mark.slow
def test_node_lost_mid_download_finishes_on_the_survivors(nodes, server, tmp_path):
    _replace_lost_node(nodes)
    rows = _curated(server)
    ref = _download_reference(tmp_path, nodes, server, rows)
    head = nodes.state["head"]
    assert {m["node"] for m in _markers(ref, "download")} <= set(nodes.state["workers"])  # never the head

    run_dir = tmp_path / "run"
    write_curated(run_dir, rows)
    before = len(server.requests)
    proc = _crawl(nodes, _download_config(tmp_path), run_dir, "download")
    killed, done = _kill_a_worker_node_mid_stage(nodes, run_dir, "download", proc,
                                                 _fresh_shard_started(server, before))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert done < 8  # the node died while shards were left to do
    survivors = set(nodes.state["workers"])
    assert killed not in survivors and head not in {m["node"] for m in _markers(run_dir, "download")}
    later = [m for m in _markers(run_dir, "download") if m["node"] != killed]
    assert later and {m["node"] for m in later} <= survivors
    # the shard the node was downloading was downloaded again on a survivor: some URLs twice
    urls = [path for path, _, _ in server.requests[before:]]
    assert any(urls.count(u) > 1 for u in urls if "/slow/" in u)
    assert any(t.get("node_id") == killed and t["state"] == "FAILED" for t in _task_attempts(nodes, "download"))
    _uids_once(run_dir, rows)
    assert _shard_bytes(run_dir) == _shard_bytes(ref)


def _match_inputs(run_dir: Path, parts: int = PARTS, rows: int = ROWS) -> None:
    run = RunDir(str(run_dir))
    words = ["red bus", "cat", "photo", "dog", "street", "tree"]
    for k in range(parts):
        texts = [f"a photo of a {words[(k + i) % 6]} number {i} in part {k}" for i in range(rows)]
        urls = [f"http://example.com/{k}/{i}.jpg" for i in range(rows)]
        run.write_parquet(f"pool/part-{k:05d}-000.parquet", pa.table({
            "uid": [f"{k}-{i}" for i in range(rows)], "url": urls, "text": texts,
            "page_url": [None] * rows, "source": ["test"] * rows,
        }, schema=pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                             ("page_url", pa.string()), ("source", pa.string())])))


@pytest.mark.slow
def test_node_lost_mid_match_finishes_on_the_survivors(nodes, tmp_path):
    _replace_lost_node(nodes)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red bus\ncat\nphoto\nstreet\n")
    cfg = tmp_path / "crawl.yaml"
    cfg.write_text(yaml.safe_dump({"match": {"entries": str(vocab)}, "ray": {"task_retries": 3}}))
    ref = tmp_path / "reference"
    _match_inputs(ref)
    proc = _crawl(nodes, cfg, ref, "match")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out

    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        _match_inputs(run_dir)
        proc = _crawl(nodes, cfg, run_dir, "match")
        try:
            killed, done = _kill_a_worker_node_mid_stage(nodes, run_dir, "match", proc, _a_moment_later(0.3))
            break
        except AssertionError as exc:
            # on a busy machine the worker node may get no second task before the stage ends: the
            # kill had nothing to interrupt, so try again on a fresh run (a kill that lands is asserted)
            if "ended before a node could be killed" not in str(exc) or attempt == 2:
                raise
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert done < PARTS
    # Ray's own record (its state API, from the head's task events): an attempt of a match task was
    # running on the node when it died, and the task was run again elsewhere
    attempts = _task_attempts(nodes, "match")
    lost = [t for t in attempts if t.get("node_id") == killed and t["state"] == "FAILED"]
    assert lost, [(t["task_id"][:8], t.get("node_id", "")[:8], t["state"], t["attempt_number"]) for t in attempts]
    redone = {t["task_id"] for t in attempts if t["attempt_number"] > 0 and t["state"] == "FINISHED"}
    assert {t["task_id"] for t in lost} <= redone
    assert {m["node"] for m in _markers(run_dir, "match")} - {killed} <= {nodes.state["head"], *nodes.state["workers"]}

    def outputs(d: Path) -> dict[str, str]:
        return {p.name: sha256(p.read_bytes()).hexdigest() for p in sorted((d / "match").glob("*.parquet"))}

    assert len(outputs(run_dir)) == PARTS + 1 and outputs(run_dir) == outputs(ref)  # parts + counts, same bytes
    stats = json.loads((run_dir / "stats" / "match.json").read_text())
    assert stats["counts"]["in"] == PARTS * ROWS  # every row matched once: no part lost, none twice


@pytest.mark.slow
def test_node_lost_under_ray_job_submit(nodes, server, tmp_path):
    """The crawl submitted with `ray job submit` (driver on the head, which survives); a worker node dies."""
    _replace_lost_node(nodes)
    rows = _curated(server, n=18)
    ref = _download_reference(tmp_path, nodes, server, rows)
    run_dir = tmp_path / "run"
    write_curated(run_dir, rows)
    cfg = _download_config(tmp_path)
    env = {k: v for k, v in nodes.env.items() if k != "RAY_AUTH_TOKEN"}  # the client reads ~/.ray/auth_token
    submit = [RAY, "job", "submit", "--address", nodes.state["dashboard"], "--working-dir", str(REPO), "--",
              "python", "crawl/main.py", "--config", str(cfg), "--run", str(run_dir), "--stages", "download"]
    proc = None
    for attempt in range(20):  # the head's job agent may still be starting
        before = len(server.requests)
        proc = subprocess.Popen(submit, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            killed, done = _kill_a_worker_node_mid_stage(nodes, run_dir, "download", proc,
                                                         _fresh_shard_started(server, before))
            break
        except AssertionError as exc:
            if proc.poll() is None:  # never leave a submitted job running into the next attempt
                proc.kill()
                proc.wait()
            if "No available agent" not in str(exc):
                raise
            if attempt == 19:
                # Ray's job agent on the head never came up. Its usual cause, another Ray holding the
                # agent's fixed port 52365, is avoided in tests/three_nodes.py; what is left is Ray's
                # start-up on an overloaded machine, not what this test is about
                pytest.skip("the head's Ray job agent stayed unavailable for 20 submissions")
            time.sleep(3)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "succeeded" in out, out
    assert done < 6 and killed not in nodes.state["workers"]
    urls = [path for path, _, _ in server.requests[before:]]
    assert any(urls.count(u) > 1 for u in urls if "/slow/" in u)  # the lost shard was downloaded again
    _uids_once(run_dir, rows)
    assert _shard_bytes(run_dir) == _shard_bytes(ref)
