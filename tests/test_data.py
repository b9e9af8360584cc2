"""Datasets: real Fashion-MNIST when installed, small IDX/CIFAR copies written here, errors, CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qnas import data
from qnas.cli import main
from qnas.errors import QnasError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f).is_file() for f in data._FASHION_MD5),
    reason=f"real Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's cache and $QNAS_DATA_DIR out of every test (platformdirs honours XDG_CACHE_HOME)."""
    monkeypatch.delenv("QNAS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def no_system_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend Debian's Fashion-MNIST is not installed."""
    source = data._REGISTRY["fashion-mnist"]
    monkeypatch.setitem(data._REGISTRY, "fashion-mnist", data._Source(**{**vars(source), "system_dirs": ()}))


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qnas: error: "), err
    return err


# ---------------------------------------------------------------------------------------------------
# Writers for small copies in the official formats. Image i carries i in its first pixels so order
# and membership can be checked.


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def _fashion_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    return images, (np.arange(n) * 7 % 10).astype(np.uint8)


def _write_fashion(directory: Path, n_train: int = 60, n_test: int = 15, gz: bool = True) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = _fashion_arrays(n_train, 1)
    test_x, test_y = _fashion_arrays(n_test, 2)
    for stem, array in [
        ("train-images-idx3-ubyte", train_x),
        ("train-labels-idx1-ubyte", train_y),
        ("t10k-images-idx3-ubyte", test_x),
        ("t10k-labels-idx1-ubyte", test_y),
    ]:
        _write(directory / stem, _idx_bytes(array), gz)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _cifar_batch(start: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    images[:, 0] = np.arange(start, start + n) % 256  # red channel, pixel (0, 0)
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


def _write_cifar(directory: Path, per_batch: int = 20, n_test: int = 20) -> dict:
    """Batches in CIFAR-10's binary layout: per image a label byte, then 3,072 pixel bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    batches = [_cifar_batch(i * per_batch, per_batch, seed=i) for i in range(5)]
    test = _cifar_batch(0, n_test, seed=99)
    for name, (images, labels) in [*zip(data._CIFAR_TRAIN, batches, strict=True), (data._CIFAR_TEST, test)]:
        (directory / name).write_bytes(np.concatenate([labels[:, None], images], axis=1).tobytes())
    return {
        "train_x": np.concatenate([x for x, _ in batches]).reshape(-1, 3, 32, 32),
        "train_y": np.concatenate([y for _, y in batches]).astype(np.int64),
        "test_x": test[0].reshape(-1, 3, 32, 32),
        "test_y": test[1].astype(np.int64),
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Registry


def test_registry_names_and_info() -> None:
    assert data.list_datasets() == ["cifar10", "fashion-mnist"]
    fashion, cifar = data.dataset_info("fashion-mnist"), data.dataset_info("cifar10")
    assert (fashion.input_shape, fashion.num_classes, fashion.mean, fashion.std) == (
        (1, 28, 28),
        10,
        (0.2860,),
        (0.3530,),
    )
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    assert (fashion.crop_padding, fashion.hflip) == (2, False)
    assert cifar.input_shape == (3, 32, 32) and len(cifar.mean) == len(cifar.std) == 3
    assert cifar.class_names[0] == "airplane" and len(cifar.class_names) == 10
    assert (cifar.crop_padding, cifar.hflip) == (4, True)


def test_unknown_dataset_lists_known_names() -> None:
    for call in (lambda: data.dataset_info("mnist"), lambda: data.load_dataset("mnist")):
        with pytest.raises(QnasError, match="unknown dataset 'mnist'; known datasets: cifar10, fashion-mnist"):
            call()


def test_split_permutation_is_pinned() -> None:
    # Every stored score depends on this permutation: it must never change.
    assert data._stable_permutation(10, 0) == [9, 4, 0, 5, 2, 7, 1, 3, 6, 8]
    assert data._stable_permutation(10, 1) == [8, 0, 3, 4, 5, 2, 9, 6, 7, 1]
    assert data.SPLIT_SEED == 0 and data.VAL_SIZE == 5_000


# ---------------------------------------------------------------------------------------------------
# Real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion() -> data.Dataset:
    if not all((FASHION_DIR / f).is_file() for f in data._FASHION_MD5):
        pytest.skip(f"real Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    return data.load_dataset("fashion-mnist", data_dir=FASHION_DIR)


@needs_fashion
def test_real_fashion_counts_shapes_labels(fashion: data.Dataset) -> None:
    assert fashion.source == FASHION_DIR
    assert (len(fashion.train_labels), len(fashion.val_labels), len(fashion.test_labels)) == (55_000, 5_000, 10_000)
    for images, labels in [
        (fashion.train_images, fashion.train_labels),
        (fashion.val_images, fashion.val_labels),
        (fashion.test_images, fashion.test_labels),
    ]:
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (1, 28, 28)
        assert labels.dtype == torch.int64 and len(images) == len(labels)
        assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert torch.bincount(fashion.test_labels).tolist() == [1_000] * 10
    counts = torch.bincount(fashion.train_labels) + torch.bincount(fashion.val_labels)
    assert counts.tolist() == [6_000] * 10


@needs_fashion
def test_real_fashion_split_is_fixed_and_disjoint(fashion: data.Dataset) -> None:
    val_idx = fashion.val_indices
    assert len(val_idx) == 5_000 and len(torch.unique(val_idx)) == 5_000
    assert bool((val_idx[1:] > val_idx[:-1]).all()) and 0 <= int(val_idx[0]) and int(val_idx[-1]) < 60_000
    # Pinned: the split is the same on every run, machine and version.
    assert val_idx[:10].tolist() == [3, 10, 15, 19, 29, 34, 45, 49, 65, 89]
    assert torch.bincount(fashion.val_labels).tolist() == [499, 497, 514, 529, 478, 500, 496, 508, 505, 474]
    # Train and validation partition the official training set, each in official order.
    official_x, official_y, _, _ = data._read_fashion(FASHION_DIR)
    is_train = torch.ones(60_000, dtype=torch.bool)
    is_train[val_idx] = False
    assert torch.equal(fashion.val_images, official_x[val_idx])
    assert torch.equal(fashion.val_labels, official_y[val_idx])
    assert torch.equal(fashion.train_images, official_x[is_train])
    assert torch.equal(fashion.train_labels, official_y[is_train])


@needs_fashion
def test_real_fashion_normalization_constants(fashion: data.Dataset) -> None:
    x = data.normalize(fashion.train_images[:20_000], fashion.info)
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1.0) < 0.02


@needs_fashion
def test_cli_check_real_fashion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "--dataset", "fashion-mnist", "--data-dir", str(FASHION_DIR), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert summary["official_train"] == 60_000 and summary["source"] == str(FASHION_DIR)
    assert summary["per_class"]["test"] == [1_000] * 10


# ---------------------------------------------------------------------------------------------------
# IDX parsing


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_small_idx_loads(tmp_path: Path, gz: bool) -> None:
    truth = _write_fashion(tmp_path / "fm", n_train=60, n_test=15, gz=gz)
    ds = data.load_dataset("fashion-mnist", data_dir=tmp_path / "fm")
    assert ds.source == tmp_path / "fm"
    assert (len(ds.train_labels), len(ds.val_labels), len(ds.test_labels)) == (54, 6, 15)
    assert torch.equal(ds.test_images[:, 0], torch.from_numpy(truth["test_x"]))
    assert torch.equal(ds.test_labels, torch.from_numpy(truth["test_y"]).long())
    train_x = torch.from_numpy(truth["train_x"]).unsqueeze(1)
    assert torch.equal(ds.val_images, train_x[ds.val_indices])
    order = torch.cat([ds.train_images[:, 0, 0, 0], ds.val_images[:, 0, 0, 0]]).long()
    assert sorted(order.tolist()) == list(range(60))  # disjoint and complete
    assert bool((ds.train_images[1:, 0, 0, 0] > ds.train_images[:-1, 0, 0, 0]).all())  # official order


def test_data_dir_subfolder_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_fashion(tmp_path / "root" / "fashion-mnist")
    assert data.load_dataset("fashion-mnist", data_dir=tmp_path / "root").source == tmp_path / "root" / "fashion-mnist"
    monkeypatch.setenv("QNAS_DATA_DIR", str(tmp_path / "root"))
    assert data.load_dataset("fashion-mnist").source == tmp_path / "root" / "fashion-mnist"


def _corrupt_cases(directory: Path) -> dict[str, tuple[str, str]]:
    """case -> (file written, message fragment)."""
    return {
        "truncated gzip": ("train-images-idx3-ubyte.gz", "cannot read"),
        "truncated plain": ("train-images-idx3-ubyte", "is truncated or corrupt"),
        "bad magic": ("train-labels-idx1-ubyte.gz", "magic number 00000803, expected 00000801"),
        "not gzip": ("t10k-images-idx3-ubyte.gz", "cannot read"),
        "count mismatch": ("t10k-labels-idx1-ubyte.gz", "has 15 images but"),
        "label range": ("train-labels-idx1-ubyte.gz", "labels outside 0..9"),
        "wrong image size": ("train-images-idx3-ubyte.gz", "expected 28x28"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases(Path())))
def test_corrupt_idx_is_one_line_error_naming_the_file(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "fm"
    _write_fashion(directory)
    name, fragment = _corrupt_cases(directory)[case]
    path = directory / name
    images, labels = _fashion_arrays(60, 1)
    for stale in directory.glob(name.removesuffix(".gz") + "*"):
        stale.unlink()
    if case == "truncated gzip":
        path.write_bytes(gzip.compress(_idx_bytes(images))[:5_000])
    elif case == "truncated plain":
        path.write_bytes(_idx_bytes(images)[:-100])
    elif case == "bad magic":
        path.write_bytes(gzip.compress(_idx_bytes(images)))  # an image file where labels belong
    elif case == "not gzip":
        path.write_bytes(b"this is not gzip data at all")
    elif case == "count mismatch":
        path.write_bytes(gzip.compress(_idx_bytes(labels[:14])))
    elif case == "label range":
        path.write_bytes(gzip.compress(_idx_bytes(labels + 5)))
    elif case == "wrong image size":
        path.write_bytes(gzip.compress(_idx_bytes(np.zeros((60, 32, 32), np.uint8))))
    with pytest.raises(QnasError, match=fragment) as info:
        data.load_dataset("fashion-mnist", data_dir=directory)
    message = str(info.value)
    assert "\n" not in message and str(directory) in message
    assert main(["data", "check", "--data-dir", str(directory)]) == 2
    assert fragment in _one_error_line(capsys)


def test_missing_fashion_says_where_and_what_to_do(
    tmp_path: Path, no_system_dirs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(QnasError) as info:
        data.load_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    message = str(info.value)
    assert "not found" in message and str(tmp_path / "empty") in message and str(data._cache_dir()) in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
    assert main(["data", "check", "--data-dir", str(tmp_path / "empty")]) == 2
    assert "apt-get install dataset-fashion-mnist" in _one_error_line(capsys)


def test_missing_data_dir_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(QnasError, match="does not exist"):
        data.load_dataset("fashion-mnist", data_dir=tmp_path / "nope")
    assert main(["data", "check", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _one_error_line(capsys)


def test_a_missing_qnas_data_dir_is_an_error_not_a_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _write_fashion(tmp_path / "cache" / "qnas" / "fashion-mnist")  # a copy the search would otherwise fall back to
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.load_dataset("fashion-mnist").source == tmp_path / "cache" / "qnas" / "fashion-mnist"
    monkeypatch.setenv("QNAS_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(QnasError, match=r"\$QNAS_DATA_DIR .*typo does not exist"):
        data.load_dataset("fashion-mnist")
    assert main(["data", "check"]) == 2
    assert "$QNAS_DATA_DIR" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 (binary version)


@pytest.mark.parametrize("layout", ["batches-subdir", "dir-itself"])
def test_small_cifar_loads(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "c" / "cifar-10-batches-bin" if layout == "batches-subdir" else tmp_path / "c"
    truth = _write_cifar(folder)
    ds = data.load_dataset("cifar10", data_dir=tmp_path / "c")
    assert ds.source == folder
    assert (len(ds.train_labels), len(ds.val_labels), len(ds.test_labels)) == (90, 10, 20)
    assert tuple(ds.train_images.shape) == (90, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64
    train_x, train_y = torch.from_numpy(truth["train_x"]), torch.from_numpy(truth["train_y"]).long()
    is_train = torch.ones(100, dtype=torch.bool)
    is_train[ds.val_indices] = False
    assert torch.equal(ds.train_images, train_x[is_train]) and torch.equal(ds.train_labels, train_y[is_train])
    assert torch.equal(ds.val_images, train_x[ds.val_indices]) and torch.equal(ds.val_labels, train_y[ds.val_indices])
    assert torch.equal(ds.test_images, torch.from_numpy(truth["test_x"]))
    assert torch.equal(ds.test_labels, torch.from_numpy(truth["test_y"]).long())
    # The flat 3072 bytes are the red, green, blue planes of a 32x32 image, row by row.
    assert int(ds.test_images[0, 0, 0, 0]) == 0 and int(ds.test_images[0, 1, 0, 0]) == truth["test_x"][0, 1, 0, 0]
    assert ds.val_indices.tolist() == sorted(data._stable_permutation(100, data.SPLIT_SEED)[:10])


@pytest.mark.parametrize("case", ["truncated", "empty", "label 10"])
def test_corrupt_cifar_is_one_line_error(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    good = path.read_bytes()
    path.write_bytes({"truncated": good[:-100], "empty": b"", "label 10": b"\x0a" + good[1:]}[case])
    with pytest.raises(QnasError) as info:
        data.load_dataset("cifar10", data_dir=tmp_path)
    where = str(path) if case != "label 10" else str(tmp_path)  # labels are checked over the whole split
    assert where in str(info.value) and "\n" not in str(info.value)
    assert main(["data", "check", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 2
    assert where in _one_error_line(capsys)


def test_cifar_python_pickles_are_not_read(tmp_path: Path) -> None:
    """The python version's batches are pickles: qnas loads nothing with pickle and points to the binary one."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch"):
        (folder / name).write_bytes(b"\x80\x02}q\x00.")  # pickle.dumps({}, protocol=2)
    with pytest.raises(QnasError, match="cifar-10-batches-bin/ .the binary version.*no pickled cifar-10-batches-py"):
        data.load_dataset("cifar10", data_dir=tmp_path)


def test_missing_cifar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_cifar(tmp_path / "partial")
    (tmp_path / "partial" / "data_batch_5.bin").unlink()
    with pytest.raises(QnasError, match="dataset .cifar10. not found .*cifar-10-batches-bin/ .*, or fetch it once"):
        data.load_dataset("cifar10", data_dir=tmp_path / "partial")
    assert main(["data", "check", "--dataset", "cifar10"]) == 2
    assert "not found" in _one_error_line(capsys)


def test_cli_check_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-bin")
    assert main(["data", "check", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"train": 90, "val": 10, "test": 20} and summary["input_shape"] == [3, 32, 32]
    assert [sum(summary["per_class"][s]) for s in ("train", "val", "test")] == [90, 10, 20]
    assert summary["source"] == str(tmp_path / "cifar-10-batches-bin")
    assert main(["data", "check", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar10: OK" in out and "100 = 90 train + 10 validation" in out and "airplane" in out


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == ["cifar10", "fashion-mnist"]
    assert main(["data", "list"]) == 0 and "fashion-mnist" in capsys.readouterr().out


def test_cli_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "--dataset", "imagenet"]) == 2
    assert "known datasets: cifar10, fashion-mnist" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------
# Downloads (offline: file:// URLs stand in for the servers)


def test_check_md5(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"qnas" * 1000)
    data._check_md5(path, hashlib.md5(b"qnas" * 1000).hexdigest())
    data._check_md5(path, hashlib.md5(b"qnas" * 1000).hexdigest().upper())
    with pytest.raises(QnasError, match="does not match the expected 0{32}"):
        data._check_md5(path, "0" * 32)


def test_download_verifies_md5(tmp_path: Path) -> None:
    source = tmp_path / "server" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(3_000_000))
    dest = tmp_path / "file.bin"
    with pytest.raises(QnasError, match="md5 .* does not match"):
        data._download(source.as_uri(), dest, "0" * 32)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()
    with pytest.raises(QnasError, match="could not download"):
        data._download((tmp_path / "missing").as_uri(), dest, _md5(source))
    data._download(source.as_uri(), dest, _md5(source))
    assert dest.read_bytes() == source.read_bytes() and not (tmp_path / "file.bin.part").exists()


def test_fashion_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_dirs: None) -> None:
    server = tmp_path / "server"
    _write_fashion(server)
    monkeypatch.setattr(data, "_FASHION_URL", server.as_uri() + "/")
    monkeypatch.setattr(data, "_FASHION_MD5", {name: _md5(server / name) for name in data._FASHION_MD5})
    ds = data.load_dataset("fashion-mnist", download=True)
    assert ds.source == data._cache_dir() / "fashion-mnist" and str(tmp_path) in str(ds.source)
    assert len(ds.train_labels) + len(ds.val_labels) == 60
    assert data.load_dataset("fashion-mnist").source == ds.source  # found in the cache next time


def _tar(archive: Path, members: dict[str, bytes], symlink: str | None = None) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)


def test_cifar_download_and_extract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "made" / "cifar-10-batches-bin"
    truth = _write_cifar(folder)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    _tar(archive, {f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())})
    monkeypatch.setattr(data, "_CIFAR_URL", archive.as_uri())
    monkeypatch.setattr(data, "_CIFAR_MD5", _md5(archive))
    ds = data.load_dataset("cifar10", download=True)
    cache = data._cache_dir() / "cifar10"
    assert ds.source == cache / "cifar-10-batches-bin"
    assert torch.equal(ds.test_images, torch.from_numpy(truth["test_x"]))
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-bin"]  # archive and staging gone
    assert data.load_dataset("cifar10").source == ds.source


@pytest.mark.parametrize("bad", ["../evil", "/tmp/evil", "other/file", "cifar-10-batches-bin/../../evil", "link"])
def test_extract_refuses_unsafe_members(tmp_path: Path, bad: str) -> None:
    archive = tmp_path / "a.tar.gz"
    if bad == "link":
        _tar(archive, {"cifar-10-batches-bin/data_batch_1.bin": b"x"}, symlink="cifar-10-batches-bin/test_batch.bin")
    else:
        _tar(archive, {"cifar-10-batches-bin/data_batch_1.bin": b"x", bad: b"evil"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(QnasError, match="refusing to extract"):
        data._extract_cifar(archive, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "evil").exists()


# ---------------------------------------------------------------------------------------------------
# Tensors for models


def _tiny(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor, data.DatasetInfo]:
    info = data.dataset_info(name)
    images = torch.randint(
        0, 256, (n, *info.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images, torch.arange(n), info


def _pixels(x: torch.Tensor, info: data.DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(-1, 1, 1)
    std = torch.tensor(info.std).view(-1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def test_normalize_values_and_checks() -> None:
    info = data.dataset_info("cifar10")
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[1] = 255
    x = data.normalize(images, info)
    assert x.dtype == torch.float32
    for c in range(3):
        assert float(x[0, c, 0, 0]) == pytest.approx(-info.mean[c] / info.std[c], rel=1e-6)
        assert float(x[1, c, 3, 3]) == pytest.approx((1 - info.mean[c]) / info.std[c], rel=1e-6)
    assert images.max() == 255  # the input is left alone
    with pytest.raises(QnasError, match="uint8"):
        data.normalize(images.float(), info)
    with pytest.raises(QnasError, match="uint8 images"):
        data.normalize(images, data.dataset_info("fashion-mnist"))


def test_iterate_batches_deterministic_and_complete() -> None:
    images, labels, info = _tiny("fashion-mnist", 50)

    def run(seed: int, **kw: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(data.iterate_batches(images, labels, 16, seed=seed, info=info, **kw))

    first, again, other = run(3), run(3), run(4)
    assert [len(y) for _, y in first] == [16, 16, 16, 2]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(50))
    for x, y in first:  # each image travels with its own label
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (1, 28, 28)
        assert torch.equal(_pixels(x, info), images[y])
    plain = run(0, shuffle=False, drop_last=True)
    assert [y.tolist() for _, y in plain] == [list(range(0, 16)), list(range(16, 32)), list(range(32, 48))]
    # Augmentation does not change which images come in which batch.
    augmented = run(3, augment=True)
    assert [y.tolist() for _, y in augmented] == [y.tolist() for _, y in first]
    # The seed drives the augmentation too, not only the order.
    fixed_order = [run(seed, shuffle=False, augment=True)[0][0] for seed in (1, 1, 2)]
    assert torch.equal(fixed_order[0], fixed_order[1]) and not torch.equal(fixed_order[0], fixed_order[2])


def _shifted(image: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    return padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_augmentation_is_crop_and_flip(name: str) -> None:
    images, labels, info = _tiny(name, 40)
    pad = info.crop_padding
    batches = list(data.iterate_batches(images, labels, 40, seed=7, info=info, augment=True))
    again = list(data.iterate_batches(images, labels, 40, seed=7, info=info, augment=True))
    (x, y), (x2, _) = batches[0], again[0]
    assert torch.equal(x, x2) and tuple(x.shape) == (40, *info.input_shape) and x.dtype == torch.float32
    out = _pixels(x, info)
    shifts, flips = set(), 0
    for k in range(40):
        original = images[y[k]]
        views = [original, original.flip(-1)] if info.hflip else [original]
        matches = [
            (v, dy, dx)
            for v, view in enumerate(views)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[k], _shifted(view, dy, dx, pad))
        ]
        assert matches, f"image {k} is not a padded crop{' or flip' if info.hflip else ''} of its original"
        shifts.add(matches[0][1:])
        flips += matches[0][0]
    assert len(shifts) > 5  # offsets really vary
    assert (0 < flips < 40) if info.hflip else flips == 0


def test_iterate_batches_checks_arguments_eagerly() -> None:
    images, labels, info = _tiny("fashion-mnist", 8)
    with pytest.raises(QnasError, match="batch size"):
        data.iterate_batches(images, labels, 0, seed=0, info=info)
    with pytest.raises(QnasError, match="uint8 images"):
        data.iterate_batches(images.float(), labels, 4, seed=0, info=info)
    with pytest.raises(QnasError, match="uint8 images"):
        data.iterate_batches(images, labels, 4, seed=0, info=data.dataset_info("cifar10"))
    with pytest.raises(QnasError, match="8 images but 7 labels"):
        data.iterate_batches(images, labels[:7], 4, seed=0, info=info)


def test_val_subset_fixed_by_n_and_seed() -> None:
    images, labels, info = _tiny("fashion-mnist", 200)
    ds = data.Dataset(info, images[:0], labels[:0], images, labels, images[:0], labels[:0])
    x, y = data.val_subset(ds, 50, seed=0)
    x2, y2 = data.val_subset(ds, 50, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2) and tuple(x.shape) == (50, 1, 28, 28)
    assert torch.equal(_pixels(x, info), images[y]) and bool((y[1:] > y[:-1]).all())
    _, other = data.val_subset(ds, 50, seed=1)
    assert not torch.equal(y, other)
    _, small = data.val_subset(ds, 20, seed=0)
    assert set(small.tolist()) <= set(y.tolist())  # one seed: smaller subsets nest in larger ones
    assert torch.equal(data.val_subset(ds, 200, seed=5)[1], labels)
    for n in (0, 201):
        with pytest.raises(QnasError, match="between 1 and 200"):
            data.val_subset(ds, n)
