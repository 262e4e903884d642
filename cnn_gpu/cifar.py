"""CIFAR-10 from its official files, per-channel normalisation, and training-time augmentation.

`load_cifar10(path)` reads either official version, from `path` or its `cifar-10-batches-py` /
`cifar-10-batches-bin` subfolder (no download):
- python: `data_batch_1` .. `data_batch_5` and `test_batch`, pickled dicts with b"data" (uint8
  (n, 3072): 1024 red, 1024 green, 1024 blue pixels, rows top to bottom) and b"labels" (n ints);
  unpickled with only the numpy classes such an array needs (a pickle can run code otherwise);
- binary: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, records of 1 label byte
  and 3072 pixel bytes in the same order.
Images come back as float32 (N, 3, 32, 32) normalised per channel with the training set's mean
and standard deviation of pixels scaled to [0, 1].

`random_crop_flip(x, seed, step)`: a random 32x32 crop of the image zero-padded by 4 pixels and a
random horizontal flip per image, drawn from Philox keyed by (seed, step): the NumPy twin of
kernels/augment.cu, which the emu and cuda backends run (bit-identical batches everywhere).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from . import backend as _backend
from . import philox
from .data import Dataset

IMAGE_SHAPE = (3, 32, 32)
RECORD_PIXELS = 3072
NUM_CLASSES = 10
TRAIN_BATCHES = 5
SUBFOLDERS = ("cifar-10-batches-py", "cifar-10-batches-bin")
PYTHON_FILES = tuple(f"data_batch_{i}" for i in range(1, TRAIN_BATCHES + 1)) + ("test_batch",)
BINARY_FILES = tuple(f"{name}.bin" for name in PYTHON_FILES)
CROP_PADDING = 4


# --- reading ------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: anything else in the file is refused
    rather than imported (a pickle may name any callable). Python 3 pickles of protocol 2 spell
    an array's bytes with _codecs.encode."""
    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               # protocol 5 (pickle.HIGHEST_PROTOCOL) rebuilds arrays from buffers
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):   # protocol 2's b"": bytes()
            return _empty_bytes
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def _empty_bytes(*args) -> bytes:
    """bytes() as protocol 2 spells b"", and nothing else: bytes(N) would allocate N bytes."""
    if args:
        raise pickle.UnpicklingError(f"refusing bytes{args!r} (only bytes() of an empty array is expected)")
    return b""


def _check_batch(data, labels, path: Path):
    if data.ndim != 2 or data.shape[1] != RECORD_PIXELS or data.dtype != np.uint8:
        raise ValueError(f"{path}: data must be uint8 of shape (n, {RECORD_PIXELS}), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: labels of shape {labels.shape} for {len(data)} images")
    if labels.size == 0:   # an empty list reads as float64
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu" or (len(labels) and not 0 <= labels.min() <= labels.max() < NUM_CLASSES):
        raise ValueError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}")
    return data.reshape((-1,) + IMAGE_SHAPE), labels.astype(np.int64)


def read_python_batch(path):
    """(images uint8 (n, 3, 32, 32), labels int64) of one pickled batch."""
    path = Path(path)
    data = path.read_bytes()
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:   # whatever a corrupt pickle raises (UnpicklingError, OverflowError on a forged size...)
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    try:
        labels, data = np.asarray(batch[b"labels"]), np.asarray(batch[b"data"])
    except (ValueError, TypeError) as err:   # ragged lists
        raise ValueError(f"{path}: unreadable labels or data ({err})") from None
    return _check_batch(data, labels, path)


def read_binary_batch(path):
    """(images uint8 (n, 3, 32, 32), labels int64) of one binary batch (label byte + 3072 pixels)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    record = RECORD_PIXELS + 1
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte records "
                         f"(1 label byte + {RECORD_PIXELS} pixel bytes)")
    records = raw.reshape(-1, record)
    return _check_batch(np.ascontiguousarray(records[:, 1:]), records[:, 0], path)


def find_batches(path):
    """(reader, files) of the CIFAR-10 version found in `path` or its official subfolders."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"cifar10: {root} is not a folder (expected the CIFAR-10 python or binary batches "
                                f"in it or in its {' or '.join(SUBFOLDERS)} subfolder)")
    partial = []   # folders holding some of a version's files: which ones they lack
    for folder in (root, *(root / sub for sub in SUBFOLDERS)):
        for reader, names in ((read_python_batch, PYTHON_FILES), (read_binary_batch, BINARY_FILES)):
            files = [folder / name for name in names]
            if all(f.is_file() for f in files):
                return reader, files
            if any(f.is_file() for f in files):
                partial.append(f"{folder} lacks {', '.join(f.name for f in files if not f.is_file())}")
    raise FileNotFoundError(
        f"cifar10: no complete CIFAR-10 batches in {root} or its {' / '.join(SUBFOLDERS)} subfolders; looked for "
        f"{', '.join(PYTHON_FILES)} (python version) or {', '.join(BINARY_FILES)} (binary version)"
        + "".join(f"; {line}" for line in partial))


def channel_statistics(images: np.ndarray):
    """Per-channel mean and standard deviation (float64) of uint8 images scaled to [0, 1], a channel
    at a time (a float64 copy of all of CIFAR-10's training images would take 1.2 GB)."""
    planes = images.reshape(len(images), images.shape[1], -1)
    mean, std = np.empty(planes.shape[1]), np.empty(planes.shape[1])
    for c in range(planes.shape[1]):
        scaled = planes[:, c] / 255.0
        mean[c], std[c] = scaled.mean(), scaled.std()
    return mean, std


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, C, H, W) images as float32 (pixel / 255 - mean[c]) / std[c]."""
    shape = (1, -1, 1, 1)
    scale = (1.0 / (255.0 * np.asarray(std))).astype(np.float32).reshape(shape)
    shift = (np.asarray(mean) / np.asarray(std)).astype(np.float32).reshape(shape)
    return images.astype(np.float32) * scale - shift


def load_cifar10(path) -> Dataset:
    """The official train (50000) / test (10000) split, normalised per channel with the training
    set's statistics (see the module docstring for the files)."""
    reader, files = find_batches(path)
    train = [reader(f) for f in files[:TRAIN_BATCHES]]
    x_train = np.concatenate([images for images, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    x_test, y_test = reader(files[-1])
    mean, std = channel_statistics(x_train)
    std = np.where(std > 0, std, 1.0)   # a constant channel (only in made-up data) stays 0
    return Dataset("cifar10", normalize(x_train, mean, std), y_train, normalize(x_test, mean, std), y_test,
                   NUM_CLASSES)


# --- augmentation -------------------------------------------------------------------------------

def _augment_args(x, seed, step, padding):
    if not isinstance(x, np.ndarray) and not _backend.is_cupy_array(x):
        raise TypeError(f"x must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.ndim != 4 or x.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"x must be a float16, float32 or float64 (N, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or not 0 <= padding < 2**15:
        raise ValueError(f"padding must be an int in [0, 32768), got {padding!r}")
    return philox.check_seed(seed, "seed"), philox.check_seed(step, "step"), int(padding)


def crop_offsets(seed: int, step: int, images: int, padding: int, first: int = 0):
    """Per image (row offset, column offset, flipped): the draws of kernels/augment.cu."""
    numbers = philox.group_numbers(seed, step, images, first)
    positions = 2 * padding + 1
    return (numbers[:, 0] % positions).astype(np.int64), (numbers[:, 1] % positions).astype(np.int64), \
        (numbers[:, 2] & 1).astype(bool)


def random_crop_flip(x, seed, step, padding=CROP_PADDING, flip=True, *, first=0, backend=None):
    """Each image of the batch x (N, C, H, W) cropped at a random offset from the image zero-padded
    by `padding`, and flipped horizontally with probability 1/2 when `flip`; the draws of image n
    come from Philox group first + n keyed by (seed, step), so a run is reproducible from its seed
    (`first`: where the batch starts in the global batch, for a data-parallel rank's shard: the
    shards then draw what one process draws for the whole batch)."""
    seed, step, padding = _augment_args(x, seed, step, padding)
    first = philox.check_seed(first, "first")
    if first + len(x) > 2**64:
        raise ValueError(f"first ({first}) plus the batch's {len(x)} images pass 2^64 Philox groups")
    flip = bool(flip)
    be = _backend.resolve(backend, x)
    if be != "numpy":
        from .gpu import augment
        return augment.random_crop_flip(be, x if x.flags.c_contiguous or be == "cuda" else np.ascontiguousarray(x),
                                        seed, step, padding, flip, first)
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    rows, cols, flips = crop_offsets(seed, step, n, padding, first)
    out = np.empty_like(x)
    for i in range(n):
        window = padded[i, :, rows[i]:rows[i] + h, cols[i]:cols[i] + w]
        out[i] = window[:, :, ::-1] if flip and flips[i] else window
    return out
