"""Datasets by name: find the files, parse them, split off a fixed validation set, serve batches.

    info = dataset_info("fashion-mnist")       # shapes, classes, normalization; touches no files
    ds = load_dataset("fashion-mnist")         # uint8 images (N, C, H, W), int64 labels: train/val/test
    x, y = val_subset(ds, 1000, seed=0)        # the fixed scoring subset, normalized float32
    for x, y in iterate_batches(ds.train_images, ds.train_labels, 128, seed=0, info=ds.info, augment=True):
        ...

Files are looked for, in order, under the ``data_dir`` argument, ``$QNAS_DATA_DIR``, the user cache
(``platformdirs.user_cache_dir("qnas")``) and system directories (Debian's ``dataset-fashion-mnist``
package installs ``/usr/share/datasets/fashion-mnist``). With ``download=True`` a dataset found nowhere
is fetched into ``<user cache>/<name>`` and its md5 checked. Parsing Fashion-MNIST from gzip takes well
under a second, so parsed tensors are not cached on disk.

The validation split is ``VAL_SIZE`` images of the official training set, picked by a permutation seeded
with ``SPLIT_SEED`` that is computed the same way on every Python and torch version; the rest, in the
official order, is the training set. Never change either constant: every stored score depends on them.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import random
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import platformdirs
import torch
import torch.nn.functional as F

from qnas.errors import QnasError

__all__ = [
    "SPLIT_SEED",
    "VAL_SIZE",
    "Dataset",
    "DatasetInfo",
    "dataset_info",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "normalize",
    "train_subset",
    "val_subset",
]

VAL_SIZE = 5_000  # validation images taken from the official training set
SPLIT_SEED = 0  # seeds the validation permutation; changing it changes every score


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, without reading it."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, of pixel values scaled to [0, 1]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    crop_padding: int = 0  # augment=True: random crop of the image padded by this many zero pixels
    hflip: bool = False  # augment=True: also flip horizontally with probability 1/2


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: uint8 images (N, C, H, W) and int64 labels (N,) for each split."""

    info: DatasetInfo
    train_images: torch.Tensor  # official training set minus the validation split, official order
    train_labels: torch.Tensor
    val_images: torch.Tensor  # the fixed validation split, in official order
    val_labels: torch.Tensor
    test_images: torch.Tensor  # the official test set
    test_labels: torch.Tensor
    source: Path = field(default=Path())  # directory the files were read from
    val_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    # positions of the validation images in the official training set, ascending

    def __repr__(self) -> str:
        return (
            f"Dataset({self.info.name!r}, train={len(self.train_labels)}, val={len(self.val_labels)}, "
            f"test={len(self.test_labels)}, source={str(self.source)!r})"
        )


# ---------------------------------------------------------------------------------------------------
# Small helpers shared by the formats


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_md5(path: Path, expected: str) -> None:
    """Raise QnasError unless the file's md5 is ``expected`` (downloads only: Debian re-gzips its copy)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise QnasError(
            f"{path}: md5 {digest.hexdigest()} does not match the expected {expected} "
            "(corrupt or incomplete download; delete it and try again)"
        )


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` via a ``.part`` file, which only becomes ``dest`` once its md5 matches."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            columns = (TextColumn(dest.name), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task("download", total=total)
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    progress.advance(task, len(chunk))
        _check_md5(part, md5)
    except QnasError:
        part.unlink(missing_ok=True)
        raise
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors, a bad URL a ValueError
        part.unlink(missing_ok=True)
        raise QnasError(f"could not download {url}: {_one_line(exc)}") from None
    os.replace(part, dest)


def _stable_permutation(n: int, seed: int) -> list[int]:
    """A permutation of range(n) that is the same on every Python/torch version.

    Only ``random.Random(int).random()`` is guaranteed stable across Python versions (``shuffle`` and
    ``torch.randperm`` are not), so this is Fisher-Yates on top of it.
    """
    rng = random.Random(seed)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def _check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise QnasError(f"{where}: labels outside 0..{num_classes - 1} (corrupt file?)")


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files, gzipped or plain

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # as used by torchvision
_FASHION_MD5 = {  # of the official .gz files
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_FASHION_STEMS = tuple(name.removesuffix(".gz") for name in _FASHION_MD5)
_IDX_UINT8 = 0x08  # IDX type code for unsigned bytes, the only one these datasets use


def _idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """Parse an IDX file of uint8 with ``ndim`` dimensions; any damage is a one-line QnasError."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError, truncation an EOFError
        raise QnasError(f"cannot read {path}: {_one_line(exc)}") from None
    magic = bytes((0, 0, _IDX_UINT8, ndim))
    if raw[:4] != magic:
        raise QnasError(
            f"{path} is not a {ndim}-d uint8 IDX file: magic number {raw[:4].hex() or 'missing'}, "
            f"expected {magic.hex()}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise QnasError(f"{path} is truncated: the header needs {header} bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise QnasError(
            f"{path} is truncated or corrupt: its header says {'x'.join(map(str, dims))} = "
            f"{math.prod(dims)} bytes of data, the file has {len(raw) - header}"
        )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(dims)


def _read_fashion_split(directory: Path, images_stem: str, labels_stem: str) -> tuple[torch.Tensor, ...]:
    images_path, labels_path = _idx_file(directory, images_stem), _idx_file(directory, labels_stem)
    assert images_path is not None and labels_path is not None  # _fashion_complete checked them
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if tuple(images.shape[1:]) != (28, 28):
        raise QnasError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise QnasError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    _check_labels(labels, 10, str(labels_path))
    return images.unsqueeze(1), labels.long()


def _fashion_complete(directory: Path) -> bool:
    return all(_idx_file(directory, stem) is not None for stem in _FASHION_STEMS)


def _read_fashion(directory: Path) -> tuple[torch.Tensor, ...]:
    train = _read_fashion_split(directory, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test = _read_fashion_split(directory, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return (*train, *test)


def _download_fashion(directory: Path) -> Path:
    for name, md5 in _FASHION_MD5.items():
        if not (directory / name).is_file():
            _download(_FASHION_URL + name, directory / name, md5)
    return directory


# ---------------------------------------------------------------------------------------------------
# CIFAR-10: the binary version (cifar-10-batches-bin), fixed-length records read without pickle

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue 32x32 planes


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3072) and labels (N,) of one batch file of CIFAR-10's binary version."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise QnasError(f"cannot read {path}: {_one_line(exc)}") from None
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise QnasError(f"{path}: {raw.size:,} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 "
                        "records (a truncated or foreign file)")
    records = raw.reshape(-1, _CIFAR_RECORD)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _read_cifar_batches(directory: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_cifar_batch(directory / name) for name in names]
    data = np.concatenate([d for d, _ in parts])  # a fresh, writable, contiguous copy
    labels = torch.from_numpy(np.concatenate([lab for _, lab in parts]).astype(np.int64))
    _check_labels(labels, 10, str(directory))
    return torch.from_numpy(data).reshape(-1, 3, 32, 32), labels


def _cifar_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (*_CIFAR_TRAIN, _CIFAR_TEST))


def _read_cifar(directory: Path) -> tuple[torch.Tensor, ...]:
    return (*_read_cifar_batches(directory, _CIFAR_TRAIN), *_read_cifar_batches(directory, (_CIFAR_TEST,)))


def _extract_cifar(archive: Path, directory: Path) -> Path:
    """Extract ``cifar-10-batches-bin`` from the archive into ``directory``; only plain files under that
    folder are written (no absolute paths, ``..``, links or devices), and only once all are out."""
    final = directory / _CIFAR_DIR
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=directory))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts or parts[:1] != (_CIFAR_DIR,):
                    raise QnasError(f"{archive}: refusing to extract {member.name!r} (outside {_CIFAR_DIR}/)")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise QnasError(f"{archive}: refusing to extract {member.name!r} (not a regular file)")
                target = staging.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have contents
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
        if not _cifar_complete(staging / _CIFAR_DIR):
            raise QnasError(f"{archive} does not contain the CIFAR-10 batches")
        if final.exists():  # an incomplete earlier copy in our own cache
            shutil.rmtree(final)
        os.replace(staging / _CIFAR_DIR, final)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise QnasError(f"cannot extract {archive}: {_one_line(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _download_cifar(directory: Path) -> Path:
    archive = directory / "cifar-10-binary.tar.gz"
    _download(_CIFAR_URL, archive, _CIFAR_MD5)
    final = _extract_cifar(archive, directory)
    archive.unlink()
    return final


# ---------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class _Source:
    info: DatasetInfo
    subdirs: tuple[str, ...]  # where under a search root the files may sit ("" is the root itself)
    system_dirs: tuple[Path, ...]  # searched last, as they are
    is_complete: Callable[[Path], bool]  # does this directory hold every file?
    read: Callable[[Path], tuple[torch.Tensor, ...]]  # -> train_x, train_y, test_x, test_y
    download: Callable[[Path], Path]  # into the given cache dir; returns the directory holding the files
    hint: str  # what to do when the dataset is nowhere


_REGISTRY: dict[str, _Source] = {
    "fashion-mnist": _Source(
        info=DatasetInfo(
            name="fashion-mnist",
            input_shape=(1, 28, 28),
            num_classes=10,
            mean=(0.2860,),
            std=(0.3530,),
            class_names=tuple(
                "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot".split(",")
            ),
            crop_padding=2,
        ),
        subdirs=("", "fashion-mnist", "FashionMNIST/raw"),
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),  # Debian package dataset-fashion-mnist
        is_complete=_fashion_complete,
        read=_read_fashion,
        download=_download_fashion,
        hint="install it with `apt-get install dataset-fashion-mnist`, pass --data-dir DIR (or set "
        "$QNAS_DATA_DIR) for a directory with the four *-ubyte.gz files, or fetch it once with "
        "`qnas data check --download`",
    ),
    "cifar10": _Source(
        info=DatasetInfo(
            name="cifar10",
            input_shape=(3, 32, 32),
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),  # per-pixel std over the training set
            class_names=tuple("airplane automobile bird cat deer dog frog horse ship truck".split()),
            crop_padding=4,
            hflip=True,
        ),
        subdirs=("", _CIFAR_DIR, "cifar10", f"cifar10/{_CIFAR_DIR}"),
        system_dirs=(),
        is_complete=_cifar_complete,
        read=_read_cifar,
        download=_download_cifar,
        hint=f"pass --data-dir DIR (or set $QNAS_DATA_DIR) for a directory holding {_CIFAR_DIR}/ (the binary "
        "version, cifar-10-binary.tar.gz: qnas reads no pickled cifar-10-batches-py), or fetch it once with "
        "`qnas data check --dataset cifar10 --download`",
    ),
}


def _source(name: str) -> _Source:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise QnasError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_REGISTRY))}") from None


def _cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("qnas"))


def _search_roots(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    roots = []
    named = [("data directory", data_dir)] if data_dir is not None else []
    if os.environ.get("QNAS_DATA_DIR"):
        named.append(("$QNAS_DATA_DIR", os.environ["QNAS_DATA_DIR"]))
    for what, value in named:
        root = Path(value).expanduser()
        if not root.is_dir():  # a typo should not silently fall back to another copy
            raise QnasError(f"{what} {root} " + ("is a file, not a directory" if root.exists() else "does not exist"))
        roots.append(root)
    roots.append(_cache_dir())
    return roots


def list_datasets() -> list[str]:
    """Names accepted by :func:`dataset_info` and :func:`load_dataset`."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """Shapes, classes and normalization of a registered dataset; reads no files."""
    return _source(name).info


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> Dataset:
    """Find, parse and split a dataset (see the module docstring for where it looks).

    Raises QnasError when the dataset is nowhere (and ``download`` is False or fails), when
    ``data_dir`` does not exist, or when a file is corrupt.
    """
    source = _source(name)
    roots = _search_roots(data_dir)
    candidates = [root / sub for root in roots for sub in source.subdirs] + list(source.system_dirs)
    directory = next((d for d in candidates if source.is_complete(d)), None)
    if directory is None:
        if not download:
            looked = ", ".join(str(d) for d in [*roots, *source.system_dirs])
            raise QnasError(f"dataset {name!r} not found (looked in {looked}); {source.hint}")
        cache = _cache_dir() / name
        cache.mkdir(parents=True, exist_ok=True)
        directory = source.download(cache)

    train_x, train_y, test_x, test_y = source.read(directory)
    for images in (train_x, test_x):
        if tuple(images.shape[1:]) != source.info.input_shape:  # guards new registry entries
            shape = tuple(images.shape[1:])
            raise QnasError(f"{directory}: images of shape {shape}, expected {source.info.input_shape}")

    val_size = min(VAL_SIZE, len(train_y) // 10)  # a tenth for the tiny copies tests write
    if val_size == 0:
        raise QnasError(f"{directory}: only {len(train_y)} training images, need at least 10")
    val_idx = torch.tensor(sorted(_stable_permutation(len(train_y), SPLIT_SEED)[:val_size]))
    is_train = torch.ones(len(train_y), dtype=torch.bool)
    is_train[val_idx] = False
    return Dataset(
        info=source.info,
        train_images=train_x[is_train],
        train_labels=train_y[is_train],
        val_images=train_x[val_idx],
        val_labels=train_y[val_idx],
        test_images=test_x.contiguous(),
        test_labels=test_y,
        source=directory,
        val_indices=val_idx,
    )


# ---------------------------------------------------------------------------------------------------
# Tensors for models


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float32 scaled to [0, 1], minus mean, over std, per channel."""
    channels = info.input_shape[0]
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != channels:
        raise QnasError(
            f"normalize expects uint8 images (..., {channels}, H, W) for {info.name}, "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    mean = torch.tensor(info.mean, dtype=torch.float32).view(channels, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(channels, 1, 1)
    return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def val_subset(ds: Dataset, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` validation images (normalized) and labels, the same for the same (n, seed).

    For one seed, smaller subsets are contained in larger ones; images keep their validation order.
    """
    total = len(ds.val_labels)
    if not 0 < n <= total:
        raise QnasError(f"validation subset size must be between 1 and {total}, got {n}")
    idx = torch.tensor(sorted(_stable_permutation(total, seed)[:n]), dtype=torch.int64)
    return normalize(ds.val_images[idx], ds.info), ds.val_labels[idx].clone()


def train_subset(ds: Dataset, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images (normalized) and labels, the same for the same (n, seed): labelled images
    that are never scored (the readout head is fitted on them, ``qnas.readout``)."""
    total = len(ds.train_labels)
    if not 0 < n <= total:
        raise QnasError(f"training subset size must be between 1 and {total}, got {n}")
    idx = torch.tensor(sorted(_stable_permutation(total, seed)[:n]), dtype=torch.int64)
    return normalize(ds.train_images[idx], ds.info), ds.train_labels[idx].clone()


def _augment(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded image (and horizontal flip where the dataset allows), uint8."""
    b, c, h, w = images.shape
    pad = info.crop_padding
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        batch, channel = torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if info.hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    seed: int,
    info: DatasetInfo,
    shuffle: bool = True,
    augment: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalized float32 (x, y) batches of uint8 ``images``; the same sequence for the same seed.

    ``augment`` applies the dataset's random crop (and flip); the shuffle order does not depend on it.
    Arguments are checked here, before the first batch is asked for.
    """
    if batch_size <= 0:
        raise QnasError(f"batch size must be positive, got {batch_size}")
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != info.input_shape:
        raise QnasError(
            f"expected uint8 images (N, {', '.join(map(str, info.input_shape))}) for {info.name}, "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) != len(labels):
        raise QnasError(f"{len(images)} images but {len(labels)} labels")
    return _batches(images, labels, batch_size, seed, info, shuffle, augment, drop_last)


def _batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    seed: int,
    info: DatasetInfo,
    shuffle: bool,
    augment: bool,
    drop_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = images[idx]
        if augment:
            x = _augment(x, info, generator)
        yield normalize(x, info), labels[idx]
