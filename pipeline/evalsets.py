"""Readers of evaluation sets: one implementation for dedup (hashing) and eval (zero-shot, linear probe).

:func:`open_evalset` turns an :class:`~pipeline.evalsets_spec.EvalSetSpec` into an :class:`EvalSet`:
a name, class names, a length, and iteration over :class:`EvalRecord` s in a fixed order. Each record
has an ``eval_id`` that is stable across runs and identical for every consumer, so dedup's overlap
table and eval's predictions join on ``(eval_set, eval_id)``:

==============  =========================================================  ===========================
kind            source                                                     ``eval_id``
==============  =========================================================  ===========================
``cifar``       ``.npz`` with ``x`` (N×H×W×3 uint8), ``y``, ``classes``     ``f"{index:06d}"``
``mnist``       folder with ``*images-idx3-ubyte[.gz]`` + labels idx        ``f"{index:06d}"``
``folder``      ``<path>/<class>/<image>``; classes = sorted subfolders     relative path ``cls/x.jpg``
``webdataset``  a ``.tar`` or a folder of them; ``<key>.jpg|png|webp`` +    ``key`` (``tar-stem/key``
                ``<key>.cls`` (int) or ``<key>.json`` (``label``/``cls``)   when several tars)
``parquet``     a file or folder; image column ``image`` (bytes, or HF      ``id``/``eval_id`` column,
                ``{bytes, path}`` struct), ``jpg``, ``img``, ``png``;       else ``f"{index:06d}"``
                label column ``label``/``labels``/``cls``
==============  =========================================================  ===========================

Class names: ``spec.classes`` when given (its length must cover every label), else what the source
holds (npz ``classes``, folder names, MNIST digits, HF ``ClassLabel`` names in parquet metadata, a
``classes.txt`` beside webdataset tars), else ``str(label)``. ``spec.limit`` keeps a seeded,
class-stratified sample of N records (:func:`pipeline.sampling.stratified_sample`, seed ``spec.seed``),
read in record order: eval files are often sorted by class, so the first N could be one class.

A record carries the encoded bytes when the source stores encoded files (folder, webdataset, parquet)
and a decoded image when it stores pixel arrays (cifar, mnist); :meth:`EvalRecord.rgb` gives an RGB
PIL image either way, :meth:`EvalRecord.gray` the grayscale image that pHash starts from (for MNIST
the original single-channel pixels, without an RGB round trip). :meth:`EvalSet.batches` decodes in
batches and reports undecodable records instead of raising, so a bad image is a counted drop.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.evalsets_spec import EvalSetSpec
from pipeline.images import to_8bit, to_rgb
from pipeline.sampling import stratified_sample

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_PARQUET_IMAGE_COLUMNS = ("image", "jpg", "img", "png", "image_bytes", "webp")
_PARQUET_LABEL_COLUMNS = ("label", "labels", "cls", "class", "target")
_PARQUET_ID_COLUMNS = ("eval_id", "id")


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation image: a stable id, an integer label, and the image as bytes or as pixels.

    Exactly one of ``image_bytes`` (encoded file, e.g. JPEG) and ``image`` (decoded PIL image from
    an array source) is set.
    """

    eval_id: str
    label: int
    image_bytes: bytes | None = None
    image: Image.Image | None = None

    def gray(self) -> Image.Image:
        """The image in PIL mode ``L``, converted the way ``imagehash`` converts (``Image.convert('L')``).

        16-bit grayscale is first scaled to 8 bits (:func:`pipeline.images.to_8bit`): Pillow clips it.
        """
        return to_8bit(self._decoded()).convert("L")

    def rgb(self) -> Image.Image:
        """The image decoded to RGB (what a CLIP preprocessing pipeline takes)."""
        return to_rgb(self._decoded())

    def sha256(self) -> str:
        """Hex sha256 of the encoded bytes, or of the raw pixel buffer for array sources."""
        if self.image_bytes is not None:
            return hashlib.sha256(self.image_bytes).hexdigest()
        assert self.image is not None
        return hashlib.sha256(self.image.tobytes()).hexdigest()

    def _decoded(self) -> Image.Image:
        if self.image is not None:
            return self.image
        if self.image_bytes is None:
            raise ValueError(f"eval record {self.eval_id!r} has no image")
        img = Image.open(io.BytesIO(self.image_bytes))
        img.load()  # decode now so a truncated file fails here, not later in a worker
        return img


@dataclass
class EvalBatch:
    """Decoded records of one batch; ``failed`` lists ``(eval_id, reason)`` of records that would not decode."""

    eval_ids: list[str]
    labels: np.ndarray
    images: list[Image.Image]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.eval_ids)


class EvalSet:
    """An evaluation set: ``name``, ``classes``, ``len()`` and iteration over :class:`EvalRecord` s.

    ``set_labels`` are the labels of every record of the source; with ``spec.limit`` below their
    count, ``selected`` holds the sorted record indices of the stratified sample that is iterated.
    """

    def __init__(self, spec: EvalSetSpec, classes: list[str], labels: np.ndarray):
        self.spec = spec
        self.name = spec.name
        self.classes = classes
        self.set_labels = np.asarray(labels, dtype=np.int64)
        n = len(self.set_labels)
        self.selected: np.ndarray | None = None
        if spec.limit is not None and spec.limit < n:
            self.selected = stratified_sample(self.set_labels, spec.limit, spec.seed)
        self._n = n if self.selected is None else len(self.selected)

    def __len__(self) -> int:
        return self._n

    @property
    def size_of_set(self) -> int:
        """Records in the source, before ``limit``."""
        return len(self.set_labels)

    def sample_description(self) -> str:
        """How the records iterated were chosen, for results tables: all, or the sample and its seed."""
        if self.selected is None:
            return f"all {self.size_of_set}"
        return f"stratified sample of {len(self)} of {self.size_of_set}, seed {self.spec.seed}"

    def __iter__(self) -> Iterator[EvalRecord]:
        if self.selected is None:
            yield from self._records()
            return
        yield from self._selected_records(self.selected)

    def _selected_records(self, indices: np.ndarray) -> Iterator[EvalRecord]:
        """The records at sorted ``indices``; readers with random access override this."""
        wanted = iter(indices.tolist())
        nxt = next(wanted, None)
        for i, rec in enumerate(self._records()):
            if nxt is None:
                return
            if i == nxt:
                yield rec
                nxt = next(wanted, None)

    def _records(self) -> Iterator[EvalRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, batch_size: int = 256, mode: str = "RGB") -> Iterator[EvalBatch]:
        """Decoded batches in record order; ``mode`` is ``"RGB"`` (eval) or ``"L"`` (hashing).

        Records that fail to decode are left out of ``images`` and listed in ``failed``.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        ids: list[str] = []
        labels: list[int] = []
        images: list[Image.Image] = []
        failed: list[tuple[str, str]] = []
        for rec in self:
            try:
                img = rec.rgb() if mode == "RGB" else rec.gray()
            except Exception as exc:  # a bad image is data, not a crash
                failed.append((rec.eval_id, f"decode: {type(exc).__name__}: {exc}"[:300]))
            else:
                ids.append(rec.eval_id)
                labels.append(rec.label)
                images.append(img)
            if len(ids) + len(failed) >= batch_size:
                yield EvalBatch(ids, np.asarray(labels, dtype=np.int64), images, failed)
                ids, labels, images, failed = [], [], [], []
        if ids or failed:
            yield EvalBatch(ids, np.asarray(labels, dtype=np.int64), images, failed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, classes={len(self.classes)})"


# --------------------------------------------------------------------------- helpers
def _classes(spec: EvalSetSpec, found: list[str] | None, max_label: int) -> list[str]:
    """Class names: the spec's, else the source's, else ``str(i)``; they must cover every label."""
    names = list(spec.classes) if spec.classes else (list(found) if found else None)
    if names is None:
        names = [str(i) for i in range(max_label + 1)]
    if max_label >= len(names):
        where = "evalsets[].classes" if spec.classes else f"the class names found in {spec.path}"
        raise ConfigError(
            f"eval set {spec.name!r}: label {max_label} has no class name ({len(names)} names in {where}); "
            "give one name per label in `classes:`"
        )
    return names


def _array_rgb(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(x))  # 2-D uint8 -> "L", H×W×3 -> "RGB"


class _ArraySet(EvalSet):
    def __init__(self, spec: EvalSetSpec, x: np.ndarray, y: np.ndarray, found: list[str] | None):
        if len(x) != len(y):
            raise ConfigError(f"eval set {spec.name!r}: {spec.path} has {len(x)} images but {len(y)} labels")
        self.x, self.y = x, y.astype(np.int64)
        super().__init__(spec, _classes(spec, found, int(self.y.max()) if len(y) else 0), self.y)

    def _records(self) -> Iterator[EvalRecord]:
        return self._selected_records(np.arange(len(self.x)))

    def _selected_records(self, indices: np.ndarray) -> Iterator[EvalRecord]:
        for i in indices.tolist():
            yield EvalRecord(f"{i:06d}", int(self.y[i]), image=_array_rgb(self.x[i]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The pixel arrays and labels (after ``limit``), for consumers that batch on arrays."""
        if self.selected is None:
            return self.x, self.y
        return self.x[self.selected], self.y[self.selected]


def _open_cifar(spec: EvalSetSpec) -> EvalSet:
    try:
        with np.load(spec.path, allow_pickle=False) as data:
            missing = {"x", "y"} - set(data.files)
            if missing:
                raise ConfigError(
                    f"eval set {spec.name!r}: {spec.path} lacks arrays {sorted(missing)}; a cifar .npz holds "
                    "x (N×H×W×3 uint8), y (labels) and optionally classes"
                )
            x, y = data["x"], data["y"]
            found = [str(c) for c in data["classes"]] if "classes" in data.files else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"eval set {spec.name!r}: cannot read {spec.path} as .npz: {exc}") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise ConfigError(
            f"eval set {spec.name!r}: x in {spec.path} must be uint8 N×H×W(×3), got {x.dtype} {x.shape}"
        )
    return _ArraySet(spec, x, y, found)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte idx file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _open_mnist(spec: EvalSetSpec) -> EvalSet:
    root = Path(spec.path)
    if root.is_file():
        root = root.parent

    def pick(kind: str) -> Path:
        hits = sorted(root.glob(f"t10k-{kind}-idx*")) or sorted(root.glob(f"*{kind}-idx*"))
        if not hits:
            raise ConfigError(
                f"eval set {spec.name!r}: no *{kind}-idx*-ubyte[.gz] file in {root}; point `path` at the folder "
                "holding the MNIST idx files"
            )
        return hits[0]

    x, y = _read_idx(pick("images")), _read_idx(pick("labels"))
    return _ArraySet(spec, x, y, [str(i) for i in range(10)] if int(y.max()) < 10 else None)


class _FolderSet(EvalSet):
    def __init__(self, spec: EvalSetSpec):
        root = Path(spec.path)
        if not root.is_dir():
            raise ConfigError(
                f"eval set {spec.name!r}: kind folder needs a directory, {spec.path} is not one"
            )
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise ConfigError(
                f"eval set {spec.name!r}: {spec.path} has no class subfolders (<path>/<class>/<img>)"
            )
        self.root = root
        self.files: list[tuple[str, int]] = []
        for label, d in enumerate(class_dirs):
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    self.files.append((f.relative_to(root).as_posix(), label))
        super().__init__(
            spec,
            _classes(spec, [d.name for d in class_dirs], len(class_dirs) - 1),
            np.asarray([label for _, label in self.files], dtype=np.int64),
        )

    def _records(self) -> Iterator[EvalRecord]:
        return self._selected_records(np.arange(len(self.files)))

    def _selected_records(self, indices: np.ndarray) -> Iterator[EvalRecord]:
        for i in indices.tolist():
            rel, label = self.files[i]
            yield EvalRecord(rel, label, image_bytes=(self.root / rel).read_bytes())


def _label_from(members: dict[str, bytes]) -> int | None:
    if "cls" in members:
        return int(members["cls"].decode().strip())
    if "json" in members:
        meta = json.loads(members["json"])
        for k in ("label", "cls", "class"):
            if k in meta:
                return int(meta[k])
    return None


class _WebDatasetSet(EvalSet):
    """Reads tars directly with :mod:`tarfile` (same member grouping rule as webdataset: key = name before the first dot)."""

    def __init__(self, spec: EvalSetSpec):
        p = Path(spec.path)
        self.tars = sorted(p.glob("*.tar")) if p.is_dir() else [p]
        if not self.tars:
            raise ConfigError(f"eval set {spec.name!r}: no .tar files in {spec.path}")
        # One pass to learn the length and the labels; images are read again when iterated.
        self.index: list[tuple[int, str, int]] = []  # (tar index, key, label)
        max_label = 0
        for ti, _key, members in self._scan():
            label = _label_from(members)
            if label is None:
                continue  # no label: not an evaluation sample
            self.index.append((ti, _key, label))
            max_label = max(max_label, label)
        found = None
        names_file = (p if p.is_dir() else p.parent) / "classes.txt"
        if names_file.is_file():
            found = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        super().__init__(
            spec, _classes(spec, found, max_label), np.asarray([lab for _, _, lab in self.index], dtype=np.int64)
        )

    def _scan(self) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        for ti, tar_path in enumerate(self.tars):
            try:
                tf = tarfile.open(tar_path)  # noqa: SIM115 - closed by the `with tf` below
            except tarfile.TarError as exc:
                raise ConfigError(
                    f"eval set {self.spec.name!r}: {tar_path} is not a tar file: {exc}"
                ) from None
            with tf:
                key, group = None, {}
                for m in tf:
                    if not m.isfile():
                        continue
                    base = posixpath.basename(m.name)
                    k, _, ext = base.partition(".")
                    k = posixpath.join(posixpath.dirname(m.name), k)
                    if k != key and key is not None:
                        yield ti, key, group
                        group = {}
                    key = k
                    group[ext.lower()] = tf.extractfile(m).read()  # type: ignore[union-attr]
                if key is not None:
                    yield ti, key, group

    def _records(self) -> Iterator[EvalRecord]:
        labels = {(ti, k): lab for ti, k, lab in self.index}
        for ti, key, members in self._scan():
            if (ti, key) not in labels:
                continue
            img = next((members[e] for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
            eval_id = key if len(self.tars) == 1 else f"{self.tars[ti].stem}/{key}"
            yield EvalRecord(eval_id, labels[(ti, key)], image_bytes=img if img is not None else b"")


class _ParquetSet(EvalSet):
    def __init__(self, spec: EvalSetSpec):
        import pyarrow.parquet as pq

        p = Path(spec.path)
        self.files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        if not self.files:
            raise ConfigError(f"eval set {spec.name!r}: no .parquet files in {spec.path}")
        schema = pq.read_schema(self.files[0])
        names = set(schema.names)
        self.image_col = next((c for c in _PARQUET_IMAGE_COLUMNS if c in names), None)
        self.label_col = next((c for c in _PARQUET_LABEL_COLUMNS if c in names), None)
        self.id_col = next((c for c in _PARQUET_ID_COLUMNS if c in names), None)
        if self.image_col is None or self.label_col is None:
            raise ConfigError(
                f"eval set {spec.name!r}: {self.files[0]} needs an image column (one of {_PARQUET_IMAGE_COLUMNS}) "
                f"and a label column (one of {_PARQUET_LABEL_COLUMNS}); it has {sorted(names)}"
            )
        labels = np.concatenate(
            [
                pq.read_table(f, columns=[self.label_col]).column(0).to_numpy(zero_copy_only=False)
                for f in self.files
            ]
        ).astype(np.int64)
        super().__init__(
            spec, _classes(spec, self._hf_names(schema), int(labels.max()) if len(labels) else 0), labels
        )

    def _hf_names(self, schema) -> list[str] | None:
        """Class names of a Hugging Face ``ClassLabel`` feature stored in the parquet metadata."""
        meta = (schema.metadata or {}).get(b"huggingface")
        if not meta:
            return None
        try:
            feature = json.loads(meta)["info"]["features"][self.label_col]
            return list(feature["names"]) if "names" in feature else None
        except (KeyError, TypeError, ValueError):
            return None

    def _records(self) -> Iterator[EvalRecord]:
        import pyarrow.parquet as pq

        index = 0
        cols = [c for c in (self.image_col, self.label_col, self.id_col) if c]
        for f in self.files:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=256, columns=cols):
                rows = batch.to_pydict()
                for j in range(batch.num_rows):
                    img = rows[self.image_col][j]
                    if isinstance(img, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
                        img = img.get("bytes")
                    eval_id = str(rows[self.id_col][j]) if self.id_col else f"{index:06d}"
                    yield EvalRecord(eval_id, int(rows[self.label_col][j]), image_bytes=img or b"")
                    index += 1


_READERS = {
    "cifar": _open_cifar,
    "mnist": _open_mnist,
    "folder": _FolderSet,
    "webdataset": _WebDatasetSet,
    "parquet": _ParquetSet,
}


def open_evalset(spec: EvalSetSpec) -> EvalSet:
    """Open the evaluation set ``spec`` describes; raises :class:`ConfigError` naming the set and the fix."""
    try:
        reader = _READERS[spec.kind]
    except KeyError:
        raise ConfigError(
            f"eval set {spec.name!r}: unknown kind {spec.kind!r}; one of {sorted(_READERS)}"
        ) from None
    return reader(spec)
