"""Data sets: IDX files (plain and gzipped), .npz, corrupt files, the split and the batch iterator."""
import gzip

import numpy as np
import pytest

from cnn_gpu import data


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _write_mnist(folder, rng, gz, n_train=30, n_test=10, size=(28, 28)):
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train,) + size, dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test,) + size, dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        data.write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, rng, gz):
    arrays = _write_mnist(tmp_path, rng, gz)
    ds = data.load_mnist(tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train-images-idx3-ubyte"] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    assert ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_idx_header_written_by_hand(tmp_path):
    # A file built byte by byte (not by write_idx): magic 00 00 08 02, dims 2 x 3, big-endian.
    payload = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes([1, 2, 3, 4, 5, 250])
    (tmp_path / "a.idx").write_bytes(payload)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(payload))
    for name in ("a.idx", "a.idx.gz"):
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), [[1, 2, 3], [4, 5, 250]])
    # int32 big-endian elements come back in native order with their values
    ints = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (258).to_bytes(4, "big") + (-7).to_bytes(4, "big", signed=True)
    (tmp_path / "b.idx").write_bytes(ints)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b.idx"), [258, -7])


@pytest.mark.parametrize("corrupt, message", [
    (lambda good: b"\x08\x03" + good[2:], "bad magic"),
    (lambda good: good[:2] + b"\x07" + good[3:], "bad magic"),
    (lambda good: good[:-5], "size mismatch"),
    (lambda good: good + b"\x00", "size mismatch"),
    (lambda good: good[:6], "truncated IDX header"),
    (lambda good: good[:3] + bytes([70]) + bytes(4 * 70), "an IDX header of 70 dimensions"),   # NumPy's own error
    (lambda good: b"", "bad magic"),
    (lambda good: gzip.compress(good)[:-8], "corrupt gzip"),
])
def test_corrupt_idx(tmp_path, rng, corrupt, message):
    good_path = tmp_path / "good.idx"
    data.write_idx(good_path, rng.integers(0, 256, (4, 5, 6), dtype=np.uint8))
    bad_path = tmp_path / "bad.idx"
    bad_path.write_bytes(corrupt(good_path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        data.read_idx(bad_path)


def test_missing_files(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        data.read_idx(tmp_path / "nope.idx")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        data.load_mnist(tmp_path / "nope")
    _write_mnist(tmp_path, rng, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)


def test_mnist_label_count_mismatch(tmp_path, rng):
    _write_mnist(tmp_path, rng, gz=False)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 9, dtype=np.uint8))
    with pytest.raises(ValueError, match="10 entries"):
        data.load_mnist(tmp_path)


def test_npz_split_and_presplit(tmp_path, rng):
    x = rng.integers(0, 256, (100, 12, 10), dtype=np.uint8)
    y = np.repeat(np.arange(5), 20)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = data.load_npz(tmp_path / "a.npz")
    assert ds.x_train.shape == (80, 1, 12, 10) and ds.x_test.shape == (20, 1, 12, 10)
    assert ds.num_classes == 5
    # stratified: every class keeps its 20% share in the test set
    np.testing.assert_array_equal(np.bincount(ds.y_test), [4] * 5)
    # the split is the same every time, and its images are the original ones
    again = data.load_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    all_images = {row.tobytes() for row in (x / np.float32(255)).astype(np.float32)}
    assert all(img[0].tobytes() in all_images for img in ds.x_test)

    xf = rng.standard_normal((6, 3, 4, 4)).astype(np.float64)
    np.savez(tmp_path / "b.npz", x_train=xf, y_train=np.arange(6), x_test=xf[:2], y_test=np.array([0, 1]))
    ds = data.load_npz(tmp_path / "b.npz")
    np.testing.assert_array_equal(ds.x_train, xf.astype(np.float32))
    assert ds.image_shape == (3, 4, 4) and ds.x_train.dtype == np.float32


@pytest.mark.parametrize("arrays, message", [
    (dict(images=np.zeros((4, 2, 2))), "expected arrays x and y"),
    (dict(x=np.ones((4, 2)), y=np.arange(4)), "images must be"),
    (dict(x=np.ones((4, 2, 2)), y=np.arange(3)), "4 entries"),
    (dict(x=np.ones((4, 2, 2)), y=np.array([0.5, 1, 2, 3])), "non-negative integers"),
    (dict(x=np.ones((4, 2, 2)), y=np.array([0, -1, 2, 3])), "non-negative integers"),
])
def test_npz_bad_contents(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        data.load_npz(tmp_path / "bad.npz")


def test_npz_corrupt_and_missing(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load_npz(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        data.load_npz(tmp_path / "absent.npz")
    # any other file, a text file included, is no pickle to NumPy's messages: named for what it is
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="text.npz: not a readable .npz file .not an .npz archive: it starts with "
                                         "neither a zip nor an .npy header"):
        data.load_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "nothing.npz")   # an empty zip starts with its end record, not a member
    assert data.read_npz(tmp_path / "nothing.npz", ".npz file") == {}


def test_digits():
    ds = data.load_digits()
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.dtype == np.float32
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.num_classes == 10 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # stratified 20% split: every class is in the test set in proportion
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    train_rows = {r.tobytes() for r in ds.x_train}
    assert not any(r.tobytes() in train_rows for r in ds.x_test[:50]), "test images leaked into training"


def test_load_dispatch(tmp_path):
    with pytest.raises(ValueError, match="needs a path"):
        data.load("mnist")
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("cifar", tmp_path)


def test_synthetic_is_seeded_and_learnable():
    x, y = data.synthetic(n=200, channels=2, height=5, width=7, num_classes=4, seed=3)
    x2, y2 = data.synthetic(n=200, channels=2, height=5, width=7, num_classes=4, seed=3)
    assert x.shape == (200, 2, 5, 7) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    # nearest class mean separates the classes: the images carry their label
    means = np.stack([x[y == c].mean(axis=0) for c in range(4)])
    nearest = ((x[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4)).argmin(axis=1)
    assert (nearest == y).mean() > 0.9


def test_batches_cover_once_and_shuffle_by_seed(rng):
    x = np.arange(23, dtype=np.float32)[:, None]
    y = np.arange(23)
    ordered = list(data.batches(x, y, 5))
    assert [len(b[1]) for b in ordered] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in ordered]), y)
    first = np.concatenate([b[1] for b in data.batches(x, y, 5, np.random.default_rng(7))])
    second = np.concatenate([b[1] for b in data.batches(x, y, 5, np.random.default_rng(7))])
    np.testing.assert_array_equal(first, second)
    assert sorted(first) == list(y) and not np.array_equal(first, y)
    for xb, yb in data.batches(x, y, 4, np.random.default_rng(8)):
        np.testing.assert_array_equal(xb[:, 0], yb)
    assert data.num_batches(23, 5) == 5
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batches(x, y, 0))


def _dataset(rng, **changes):
    """A valid 3-class Dataset of 4x5 two-channel images, with `changes` to its fields."""
    fields = dict(name="made", x_train=rng.standard_normal((12, 2, 4, 5)).astype(np.float32),
                  y_train=np.arange(12, dtype=np.int64) % 3,
                  x_test=rng.standard_normal((6, 2, 4, 5)).astype(np.float32),
                  y_test=np.arange(6, dtype=np.int64) % 3, num_classes=3)
    fields.update(changes)
    return data.Dataset(**fields)


def _spoiled(array, value):
    array = array.copy()
    array.flat[4] = value
    return array


@pytest.mark.parametrize("change, message", [
    (lambda ds: dict(x_test=ds.x_test[:0], y_test=ds.y_test[:0]), "the test set is empty"),
    (lambda ds: dict(x_train=ds.x_train[:0], y_train=ds.y_train[:0]), "the training set is empty"),
    (lambda ds: dict(x_test=ds.x_test[:, :, :3]), "differ in shape"),
    (lambda ds: dict(x_train=ds.x_train[:, :0]), r"C, H, W >= 1"),
    (lambda ds: dict(x_train=ds.x_train.astype(np.float64)), "must be float32"),
    (lambda ds: dict(x_train=ds.x_train[0]), "must be float32"),
    (lambda ds: dict(x_train=_spoiled(ds.x_train, np.nan)), "1 training image.* NaN or infinite"),
    (lambda ds: dict(x_test=_spoiled(ds.x_test, np.inf)), "1 test image.* NaN or infinite"),
    (lambda ds: dict(y_train=_spoiled(ds.y_train, -2)), "non-negative"),
    (lambda ds: dict(y_test=_spoiled(ds.y_test, 3)), "out of range for 3 classes"),
    (lambda ds: dict(y_train=_spoiled(ds.y_train, 2**40), num_classes=2**40 + 1),
     "1099511627777 classes; expected 1..100000"),
    (lambda ds: dict(y_test=ds.y_test.astype(np.int32)), "must be int64"),
    (lambda ds: dict(y_test=ds.y_test[:-1]), "6 entries"),
])
def test_validate_dataset_refuses(rng, change, message):
    good = _dataset(rng)
    assert data.validate_dataset(good) is good
    with pytest.raises(ValueError, match=message):
        data.validate_dataset(_dataset(rng, **change(good)))


def test_huge_unsigned_labels_do_not_wrap(tmp_path, rng):
    """A uint64 label above int64's range would turn negative in the cast to int64: refused first."""
    np.savez(tmp_path / "a.npz", x=rng.random((4, 3, 3)), y=np.array([0, 1, 2**63, 1], dtype=np.uint64))
    with pytest.raises(ValueError, match="would make 9223372036854775809 classes"):
        data.load_npz(tmp_path / "a.npz")


# --- layouts and damaged files that used to pass or crash (a data-loading audit) -----------------

@pytest.mark.parametrize("layout", ["dotted", "raw", "MNIST/raw"])
def test_mnist_mirrors_and_torchvisions_raw_folder_are_found(tmp_path, rng, layout):
    folder = tmp_path / ("" if layout == "dotted" else layout)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _write_mnist(folder, rng, gz=False)
    if layout == "dotted":   # train-images.idx3-ubyte, as some mirrors name them
        for stem in arrays:
            (folder / stem).rename(folder / stem.replace("-idx", ".idx"))
    ds = data.load_mnist(tmp_path)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])


def test_mnist_labels_must_be_digit_classes(tmp_path, rng):
    arrays = _write_mnist(tmp_path, rng, gz=False)
    labels = arrays["train-labels-idx1-ubyte"].copy()
    labels[3] = 200   # silently made 201 classes
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match="training label 200 is not one of its 10 classes"):
        data.load_mnist(tmp_path)


def test_idx_size_check_does_not_wrap(tmp_path):
    """Four dimensions of 65536 in a header-only file: the byte count needs more than 64 bits."""
    path = tmp_path / "huge-idx"
    path.write_bytes(bytes([0, 0, 8, 4]) + np.full(4, 65536, dtype=">u4").tobytes())
    with pytest.raises(ValueError, match=r"\(18446744073709551636 bytes with the header\), the file holds 20"):
        data.read_idx(path)


def test_channels_last_images_are_refused_with_the_transpose(tmp_path, rng):
    path = tmp_path / "nhwc.npz"
    np.savez(path, x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y=np.arange(40) % 4)
    with pytest.raises(ValueError, match=r"look channels-last .* np.transpose\(x, \(0, 3, 1, 2\)\)"):
        data.load_npz(path)
    np.savez(path, x=rng.random((40, 2, 8, 4)).astype(np.float32), y=np.arange(40) % 4)
    assert data.load_npz(path).image_shape == (2, 8, 4)   # NCHW with a narrow width: taken as it is


def test_npz_files_that_are_not_readable_archives_say_so(tmp_path, rng):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="an .npy array, not an .npz archive"):
        data.read_npz(npy, ".npz file")
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, x=rng.integers(0, 256, (64, 64), dtype=np.uint8))
    raw = bytearray(packed.read_bytes())
    start = raw.index(b"x.npy") + len("x.npy") + 40   # inside the deflate stream of x.npy
    raw[start:start + 32] = bytes(32)
    packed.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a readable .npz file"):
        data.read_npz(packed, ".npz file")
    huge = tmp_path / "huge.npz"   # a member whose header claims 58 TiB
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 4, 4), np.float32))
    header["shape"] = (10**12, 4, 4)
    import io
    import zipfile
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    with zipfile.ZipFile(huge, "w") as archive:
        archive.writestr("x.npy", member.getvalue() + bytes(64))
    with pytest.raises(ValueError, match="not a readable .npz file"):
        data.read_npz(huge, ".npz file")
    # damage numpy's and zipfile's own errors let out (helper-98's byte flips): an unknown compression
    # method in the central directory (NotImplementedError), a member header cut short (TokenError)
    method = tmp_path / "method.npz"
    np.savez(method, x=np.zeros((10, 1, 4, 4), np.float32), y=np.arange(10) % 2)
    raw = bytearray(method.read_bytes())
    raw[raw.index(b"PK\x01\x02") + 10] = 99
    method.write_bytes(bytes(raw))
    cut = tmp_path / "cut.npz"
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (10, 1, 4, 4"
    with zipfile.ZipFile(cut, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(text + b"\n").to_bytes(2, "little") + text + b"\n"
                         + bytes(640))
        archive.writestr("y.npy", b"")
    raw = tmp_path / "raw.npz"   # a member that is no .npy array: NumPy returned its bytes
    with zipfile.ZipFile(raw, "w") as archive:
        archive.writestr("x", b"pixels")
    with pytest.raises(ValueError, match=r"raw.npz: not a readable .npz file \(member 'x' is not an .npy array\)"):
        data.read_npz(raw, ".npz file")
    for damaged, error in ((method, "NotImplementedError"), (cut, "TokenError|SyntaxError")):
        with pytest.raises(ValueError, match=f"not a readable .npz file \\(({error})"):
            data.read_npz(damaged, ".npz file")
