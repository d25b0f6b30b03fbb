"""Eval-set readers: every kind yields stable ids, labels, class names and decodable images."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.evalsets import open_evalset
from pipeline.evalsets_spec import EvalSetSpec


def _png(seed: int, size=(20, 16)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _spec(kind, path, **kw) -> EvalSetSpec:
    return EvalSetSpec(name="t", kind=kind, path=str(path), **kw)


def test_cifar_ids_labels_classes_and_limit(shared_data):
    es = open_evalset(_spec("cifar", shared_data / "eval" / "cifar10_test.npz", limit=5))
    recs = list(es)
    assert len(es) == len(recs) == 5 and es.classes[0] == "airplane" and len(es.classes) == 10
    ids = [r.eval_id for r in recs]
    assert ids == sorted(ids) and len(set(ids)) == 5  # a sample, read in record order
    y = np.load(shared_data / "eval" / "cifar10_test.npz")["y"]
    assert [r.label for r in recs] == [int(y[int(i)]) for i in ids]
    assert len({r.label for r in recs}) == 5  # 5 < 10 classes: five classes, one image each
    assert recs[0].rgb().size == (32, 32) and recs[0].rgb().mode == "RGB"


def test_limit_on_a_class_sorted_set_is_a_stratified_sample_not_the_first_n(shared_data):
    """Issue 21, finding 1: the CIFAR-10 test file is sorted by class, its first 1,000 images are all
    airplanes; `limit: 1000` must give every class its share, seeded and recorded."""
    path = shared_data / "eval" / "cifar10_test.npz"
    y = np.load(path)["y"]
    assert set(y[:1000].tolist()) == {0}  # the file really is class-sorted
    es = open_evalset(_spec("cifar", path, limit=1000))
    labels = np.asarray([r.label for r in es])
    assert len(labels) == 1000 and np.bincount(labels, minlength=10).tolist() == [100] * 10
    assert es.sample_description() == "stratified sample of 1000 of 10000, seed 0"
    again = [r.eval_id for r in open_evalset(_spec("cifar", path, limit=1000))]
    other = [r.eval_id for r in open_evalset(_spec("cifar", path, limit=1000, seed=1))]
    assert again == [r.eval_id for r in es] and other != again  # same seed, same images; not otherwise
    x, yy = es.arrays()
    assert len(x) == 1000 and yy.tolist() == labels.tolist()


def test_limit_keeps_every_class_of_an_unbalanced_folder_set(tmp_path):
    for cls, n in (("a", 40), ("b", 8), ("c", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i:02d}.png").write_bytes(_png(i))
    es = open_evalset(_spec("folder", tmp_path, limit=10))
    recs = list(es)
    counts = np.bincount([r.label for r in recs], minlength=3).tolist()
    assert len(recs) == 10 and counts[1] >= 1 and counts[2] >= 1 and counts[0] > counts[1]
    assert all((tmp_path / r.eval_id).is_file() and r.eval_id.startswith("abc"[r.label]) for r in recs)


def test_mnist_reads_idx_files(shared_data):
    es = open_evalset(_spec("mnist", shared_data / "eval" / "mnist"))
    recs = [r for _, r in zip(range(3), es, strict=False)]
    assert es.classes == [str(i) for i in range(10)] and [r.label for r in recs] == [7, 2, 1]
    assert recs[0].gray().size == (28, 28) and recs[0].rgb().mode == "RGB"
    assert len(open_evalset(_spec("mnist", shared_data / "eval" / "mnist", limit=3))) == 3


def test_folder_sorted_classes_relative_path_ids(tmp_path):
    for cls, n in (("dog", 2), ("cat", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(i))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    es = open_evalset(_spec("folder", tmp_path))
    assert es.classes == ["cat", "dog"]
    assert [(r.eval_id, r.label) for r in es] == [("cat/0.png", 0), ("dog/0.png", 1), ("dog/1.png", 1)]
    es = open_evalset(_spec("folder", tmp_path, classes=["a cat", "a dog"]))
    assert es.classes == ["a cat", "a dog"]
    with pytest.raises(ConfigError, match="label 1 has no class name"):
        open_evalset(_spec("folder", tmp_path, classes=["only one"]))


def test_webdataset_cls_and_json_labels(tmp_path):
    tar_path = tmp_path / "eval-000.tar"
    with tarfile.open(tar_path, "w") as tf:
        for key, label, how in (("a", 2, "cls"), ("b", 0, "json"), ("c", None, None)):
            members = {"png": _png(len(key) + ord(key))}
            if how == "cls":
                members["cls"] = str(label).encode()
            elif how == "json":
                members["json"] = json.dumps({"label": label}).encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    (tmp_path / "classes.txt").write_text("zero\none\ntwo\n")
    es = open_evalset(_spec("webdataset", tmp_path))
    recs = list(es)
    assert [(r.eval_id, r.label) for r in recs] == [("a", 2), ("b", 0)]  # "c" has no label: not a sample
    assert es.classes == ["zero", "one", "two"] and recs[0].rgb().size == (20, 16)


def test_parquet_hf_image_struct_and_class_names(tmp_path):
    table = pa.table(
        {
            "image": [
                {"bytes": _png(1), "path": None},
                {"bytes": _png(2), "path": None},
                {"bytes": b"broken", "path": None},
            ],
            "label": [1, 0, 1],
        }
    )
    meta = {"info": {"features": {"label": {"names": ["cat", "dog"], "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
    pq.write_table(table, tmp_path / "test.parquet")
    es = open_evalset(_spec("parquet", tmp_path / "test.parquet"))
    assert es.classes == ["cat", "dog"] and len(es) == 3
    assert [r.eval_id for r in es] == ["000000", "000001", "000002"]
    batches = list(es.batches(batch_size=2))
    assert [len(b) for b in batches] == [2, 0]
    assert batches[1].failed and batches[1].failed[0][0] == "000002" and "decode" in batches[1].failed[0][1]
    assert batches[0].labels.tolist() == [1, 0] and batches[0].images[0].mode == "RGB"


def test_bad_sources_are_config_errors(tmp_path):
    pq.write_table(pa.table({"pixels": [b"x"], "y": [0]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match="image column"):
        open_evalset(_spec("parquet", tmp_path / "bad.parquet"))
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="lacks arrays"):
        open_evalset(_spec("cifar", tmp_path / "bad.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class subfolders"):
        open_evalset(_spec("folder", tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no \\*images-idx"):
        open_evalset(_spec("mnist", tmp_path / "empty"))
