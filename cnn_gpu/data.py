"""Data sets as NCHW float32 images with int64 labels, a fixed-seed stratified split and a
seeded batch iterator.

- `load_digits()`: scikit-learn's bundled 8x8 handwritten digits (no download), the default.
- `load_mnist(path)`: MNIST or Fashion-MNIST from the four IDX files (gzipped or not) in `path`.
- `load_npz(path)`: arrays x, y (split here) or x_train, y_train, x_test, y_test.
- `synthetic(...)`: learnable random images of any size, for benchmarks.
- `validate_dataset(ds)`: refuses a data set unfit to train on (empty splits, NaN pixels, ...);
  `cnn-gpu train` runs it on every data set before the first epoch.
"""
from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The split does not depend on the training seed, so every run is scored on the same test set.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
# Labels are class indices and the classifier has one output per class up to the largest: a label
# beyond this is a mistake (an id, not an index) that would make a classifier too big to allocate.
MAX_CLASSES = 100_000


@dataclass
class Dataset:
    """A train/test split: x (N, C, H, W) float32, y (N,) int64 class indices 0..num_classes-1."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    def standardized(self) -> "Dataset":
        """Both sets shifted and scaled by the training set's pixel mean and standard deviation."""
        mean = self.x_train.mean(dtype=np.float64)
        std = self.x_train.std(dtype=np.float64) or 1.0
        scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
        return Dataset(self.name, scale(self.x_train), self.y_train, scale(self.x_test), self.y_test,
                       self.num_classes)


# --- IDX files ----------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_maybe_gzipped(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip data ({err})") from None


def read_idx(path) -> np.ndarray:
    """The array in an IDX file (the MNIST format), gzipped or not, in native byte order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_maybe_gzipped(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'none'}; expected "
                         f"00 00 <type 08/09/0b/0c/0d/0e> <ndim>)")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    if ndim > 32:   # NumPy's limit is 64; images and labels have 1 to 4
        raise ValueError(f"{path}: an IDX header of {ndim} dimensions (images and labels have 1 to 4)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize   # Python ints: a huge header cannot wrap
    if len(data) != expected:
        raise ValueError(f"{path}: size mismatch: header says shape {shape} of {dtype.name} "
                         f"({expected} bytes with the header), the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write `array` as an IDX file (gzipped when the name ends in .gz); the inverse of read_idx."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"IDX cannot store dtype {array.dtype}")
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
               + array.astype(np.dtype(_IDX_TYPES[code]), copy=False).tobytes())
    Path(path).write_bytes(gzip.compress(payload) if str(path).endswith(".gz") else payload)


# --- data sets ----------------------------------------------------------------------------------

def _as_images(x, source: str) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) as float32 NCHW; integer pixels are scaled from 0..255 to [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{source}: images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if x.shape[3] in (1, 3, 4) and x.shape[1] == x.shape[2] > 4:   # square images, 1-4 channels last
        raise ValueError(f"{source}: images of shape {x.shape} look channels-last (N, H, W, C); this library "
                         f"takes (N, C, H, W): np.transpose(x, (0, 3, 1, 2))")
    if x.dtype.kind in "iu":
        return (x / np.float32(255)).astype(np.float32)
    if x.dtype.kind != "f":
        raise ValueError(f"{source}: images must be numeric, got dtype {x.dtype}")
    with np.errstate(over="ignore"):   # values beyond float32 become inf, which validate_dataset refuses
        return np.ascontiguousarray(x, dtype=np.float32)


def _check_labels(y: np.ndarray, n: int, source: str) -> None:
    """`y` must be n class indices: integers in 0..MAX_CLASSES-1 (checked before any cast, which
    could wrap a huge unsigned label round to a negative one)."""
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{source}: labels must be a 1-D array of {n} entries (one per image), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be non-negative integers, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{source}: labels must be non-negative integers, got {y.min()}")
    if len(y) and y.max() >= MAX_CLASSES:
        raise ValueError(f"{source}: label {y.max()} would make {int(y.max()) + 1} classes; labels are class "
                         f"indices 0..N-1, at most {MAX_CLASSES} classes")


def _as_labels(y, n: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    _check_labels(y, n, source)
    return y.astype(np.int64)


def stratified_split(x, y, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """(x_train, y_train, x_test, y_test): each class split in the same proportion, fixed by seed."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        chosen = rng.permutation(members)[:int(round(len(members) * test_fraction))]
        test[chosen] = True
    return x[~test], y[~test], x[test], y[test]


def _make(name, x_train, y_train, x_test, y_test) -> Dataset:
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def load_digits(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> Dataset:
    """scikit-learn's 1797 handwritten digits, 8x8 pixels scaled from 0..16 to [0, 1], (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits as sklearn_digits
    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    return _make("digits", *stratified_split(x, y, test_fraction, seed))


_MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
# where the files may sit: the folder, or torchvision's raw/ layout under it
_MNIST_FOLDERS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")
MNIST_CLASSES = 10


def _mnist_file(folder: Path, stem: str):
    """The IDX file `stem` in `folder` or one of its _MNIST_FOLDERS, plain or .gz, also with a dot before
    'idx' (train-images.idx3-ubyte, as some mirrors name them); None if absent."""
    dotted = stem.replace("-idx", ".idx")
    for sub in _MNIST_FOLDERS:
        for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
            if (folder / sub / name).is_file():
                return folder / sub / name
    return None


def load_mnist(path, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST (same file names) from a folder with the four IDX files, each either
    plain or gzipped (.gz); the official train/test split, pixels scaled to [0, 1]."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: {folder} is not a folder (expected the four IDX files "
                                f"{', '.join(_MNIST_FILES.values())}, optionally .gz, inside it)")
    arrays = {}
    for key, stem in _MNIST_FILES.items():
        found = _mnist_file(folder, stem)
        if found is None:
            raise FileNotFoundError(f"{name}: {stem} (or {stem}.gz, or with '.idx') not found in {folder} or its "
                                    f"{', '.join(sub for sub in _MNIST_FOLDERS if sub)} subfolders")
        arrays[key] = read_idx(found)
    x_train = _as_images(arrays["x_train"], f"{name} training images")
    x_test = _as_images(arrays["x_test"], f"{name} test images")
    y_train = _as_labels(arrays["y_train"], len(x_train), f"{name} training labels")
    y_test = _as_labels(arrays["y_test"], len(x_test), f"{name} test labels")
    for split, y in (("training", y_train), ("test", y_test)):
        if len(y) and y.max() >= MNIST_CLASSES:
            raise ValueError(f"{name}: {split} label {y.max()} is not one of its {MNIST_CLASSES} classes 0..9")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{name}: training images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ")
    return _make(name, x_train, y_train, x_test, y_test)


def read_npz(path, what: str) -> dict:
    """Every array of an .npz file (no pickles), read fully; `what` names the file in errors."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():   # a device (/dev/null), a pipe: it would read as empty or never end
        raise ValueError(f"{what} {path} is not a regular file")
    try:
        with open(path, "rb") as f:   # np.load takes any other file for a pickle, and says so
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUM"):
                raise ValueError("not an .npz archive: it starts with neither a zip nor an .npy header")
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):   # an .npy file: one bare array
            raise ValueError("an .npy array, not an .npz archive of named arrays")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
        raw = [key for key, value in arrays.items() if not isinstance(value, np.ndarray)]
        if raw:   # NumPy hands a member that is no .npy array over as its bytes
            raise ValueError(f"member {raw[0]!r} is not an .npy array")
        return arrays
    except MemoryError:   # an array header claiming more than memory holds
        raise ValueError(f"{path}: not a readable {what} (an array larger than memory)") from None
    except Exception as err:   # whatever a corrupt archive raises (BadZipFile, zlib.error, a header's TokenError...)
        said = err if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {err}"
        raise ValueError(f"{path}: not a readable {what} ({said})") from None


def load_npz(path, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> Dataset:
    """An .npz with x (images) and y (labels), split here, or with x_train, y_train, x_test, y_test.
    Images (N, H, W) or (N, C, H, W); integer pixels are scaled from 0..255 to [0, 1]."""
    path = Path(path)
    arrays = read_npz(path, ".npz file")
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        x_train = _as_images(arrays["x_train"], f"{path} x_train")
        x_test = _as_images(arrays["x_test"], f"{path} x_test")
        parts = (x_train, _as_labels(arrays["y_train"], len(x_train), f"{path} y_train"),
                 x_test, _as_labels(arrays["y_test"], len(x_test), f"{path} y_test"))
    elif {"x", "y"} <= arrays.keys():
        x = _as_images(arrays["x"], f"{path} x")
        parts = stratified_split(x, _as_labels(arrays["y"], len(x), f"{path} y"), test_fraction, seed)
    else:
        raise ValueError(f"{path}: expected arrays x and y (or x_train, y_train, x_test, y_test), found "
                         f"{', '.join(sorted(arrays)) or 'none'}")
    return _make(path.stem, *parts)


def synthetic(n: int = 1024, channels: int = 3, height: int = 32, width: int = 32, num_classes: int = 10,
              noise: float = 0.5, seed: int = 0):
    """(x, y): n images, each its class's fixed random template plus Gaussian noise (learnable,
    any size), x (n, channels, height, width) float32, y (n,) int64."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((num_classes, channels, height, width)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    x = templates[y] + np.float32(noise) * rng.standard_normal((n, channels, height, width), dtype=np.float32)
    return x, y


def validate_dataset(dataset: Dataset) -> Dataset:
    """`dataset` itself when it is fit to train and test on, else a ValueError naming the problem:
    an empty split, images that are not float32 (N, C, H, W) with C, H, W >= 1, training and test
    images of different shapes, NaN or infinite pixels, labels that are not one int64 class index
    per image below num_classes, or more than MAX_CLASSES classes."""
    name = dataset.name
    if not 1 <= dataset.num_classes <= MAX_CLASSES:
        raise ValueError(f"{name}: {dataset.num_classes} classes; expected 1..{MAX_CLASSES}")
    for split, x, y in (("training", dataset.x_train, dataset.y_train), ("test", dataset.x_test, dataset.y_test)):
        if x.ndim != 4 or x.dtype != np.float32 or 0 in x.shape[1:]:
            raise ValueError(f"{name}: {split} images must be float32 (N, C, H, W) with C, H, W >= 1, got "
                             f"{x.dtype} {x.shape}")
        if len(x) == 0:
            raise ValueError(f"{name}: the {split} set is empty")
        if y.dtype != np.int64:
            raise ValueError(f"{name}: {split} labels must be int64, got {y.dtype}")
        _check_labels(y, len(x), f"{name} {split} labels")
        if y.max() >= dataset.num_classes:
            raise ValueError(f"{name}: {split} label {y.max()} is out of range for {dataset.num_classes} classes")
        finite = np.isfinite(x)
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))
            raise ValueError(f"{name}: {len(bad)} {split} image(s) hold NaN or infinite pixels (after conversion to "
                             f"float32), the first is image {bad[0]}")
    if dataset.x_train.shape[1:] != dataset.x_test.shape[1:]:
        raise ValueError(f"{name}: training images {dataset.x_train.shape[1:]} and test images "
                         f"{dataset.x_test.shape[1:]} differ in shape")
    return dataset


def load(name: str, path=None) -> Dataset:
    """The data set the CLI names: digits (no path), mnist / fashion-mnist / cifar10 (a folder), npz
    (a file)."""
    if name == "digits":
        return load_digits()
    if path is None:
        raise ValueError(f"data set {name!r} needs a path (--data PATH)")
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(path, name)
    if name == "npz":
        return load_npz(path)
    if name == "cifar10":
        from .cifar import load_cifar10
        return load_cifar10(path)
    raise ValueError(f"unknown data set {name!r}; expected digits, mnist, fashion-mnist, npz or cifar10")


def batches(x, y, batch_size: int, rng=None):
    """(x_batch, y_batch) pairs covering x once; shuffled by `rng` (a numpy Generator) when given,
    in order otherwise. The last batch may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for start in range(0, len(x), batch_size):
        chosen = order[start:start + batch_size]
        yield x[chosen], y[chosen]


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
