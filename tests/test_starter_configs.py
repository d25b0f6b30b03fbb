"""The starter configs of infra/configs/ are refused while they hold placeholders (exit 2, naming each key and
writing nothing), and `webclip config --config …` accepts each once `--set` fills them. They run end to end
in tests/test_laptop_to_cluster.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

#: What a user fills in each starter (paths that exist here; the bucket names are only text to `config`).
FILLS = {
    "crawl": ["--run", "s3://my-bucket/runs/wit",
              "--set", f"evalsets.0.path={DATA}/eval/cifar10_test.npz", "--set", f"evalsets.1.path={DATA}/eval/mnist",
              "--set", "vocab.wikipedia.dumps=[s3://my-bucket/wiki/enwiki-multistream.xml.bz2]",
              "--set", "vocab.pageviews=[s3://my-bucket/wiki/pageviews-20240801-*.gz]",
              "--set", "download.contact_url=https://example.org/crawler"],
    "train": ["--run", "/data/runs/wit", "--set", f"evalsets.0.path={DATA}/eval/cifar10_test.npz"],
    "eval": ["--run", "/data/runs/wit", "--set", f"evalsets.0.path={DATA}/eval/cifar10_test.npz",
             "--set", f"evalsets.1.path={DATA}/eval/mnist",
             "--set", f"eval.retrieval.0.path={DATA}/photos/coco_mini/annotations/captions_val2017.json"],
}


@pytest.mark.parametrize("name", sorted(FILLS))
def test_starter_config_is_refused_until_its_placeholders_are_filled(name, capsys, shared_data, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: not here, not in the repository
    config = str(REPO / "infra" / "configs" / f"{name}.yaml")
    assert main(["config", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "placeholder(s) not filled in" in err and "  run = " in err
    assert main(["config", "--config", config, *FILLS[name]]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"] in ("s3://my-bucket/runs/wit", "/data/runs/wit")
    assert not list(tmp_path.iterdir())


def _resolved(name: str, capsys) -> dict:
    assert main(["config", "--config", str(REPO / "infra" / "configs" / f"{name}.yaml"), *FILLS[name]]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_what_the_starters_configure(capsys, shared_data):
    crawl = _resolved("crawl", capsys)
    wat = crawl["extract"]["inputs"][0]
    assert wat["kind"] == "wat" and wat["paths_list"].endswith("/wat.paths.gz")
    assert wat["prefix"] == "https://data.commoncrawl.org/" and wat["sample"]
    assert crawl["balance"]["t"] == 20000 and crawl["run"].startswith("s3://")
    assert crawl["vocab"]["sources"] == ["wordnet", "unigram", "bigram", "title"]
    assert {e["name"] for e in crawl["evalsets"]} == {"cifar10", "mnist"} and crawl["dedup"]["mode"] == "remove"
    assert crawl["ray"]["stage_resources"]["download"] == {"download": 1.0}
    assert "dedup" in crawl["stages"] and "train" not in crawl["stages"]
    train = _resolved("train", capsys)["train"]
    assert train["model"] == "ViT-B-16" and train["deepspeed_config"] == "infra/deepspeed/zero2.json"
    assert train["batch_size"] * train["grad_accum"] * train["num_procs"] == 32768  # CLIP's batch
    assert (REPO / train["deepspeed_config"]).is_file()
    evaluation = _resolved("eval", capsys)
    assert evaluation["stages"] == ["eval", "audit"]
    assert set(evaluation["eval"]["tasks"]) == {"zeroshot", "retrieval", "linear_probe"}
