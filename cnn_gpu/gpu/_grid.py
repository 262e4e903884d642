"""Launch-shape helpers shared by the grid-stride kernels (pool, elementwise, loss, optim, softmax)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import compute_dtype

THREADS = 256           # block size of these kernels (their __launch_bounds__)
MAX_BLOCKS_X = 65536    # grid-stride loops cover the rest; plenty to fill any GPU
MAX_GRID_Y = 65535      # CUDA's limit on gridDim.y
PLANE_LIMIT = 2**31     # in-plane positions are 32-bit ints in the kernels


def check_planes(kernels: str, **pixels) -> None:
    """ValueError naming the plane (`pixels`: name -> pixel count) of 2^31 pixels or more, which
    `kernels` (for_each_plane_pixel, kernels/plane_walk.cuh) could not index with 32-bit ints."""
    for name, count in pixels.items():
        if count >= PLANE_LIMIT:
            raise ValueError(f"{kernels} kernels index a plane with 32-bit ints: the {name} plane has {count} pixels "
                             f"(2^31 or more)")


def blocks_for(count: int) -> int:
    """Blocks of THREADS along x for a grid-stride loop over `count` items."""
    return max(1, min(-(-int(count) // THREADS), MAX_BLOCKS_X))


def row_lanes(size: int) -> int:
    """The threads a contiguous row of `size` elements takes in kernels/rows.cuh's for_each_row (its
    row_lanes): the smallest power of two covering it, at most THREADS."""
    lanes = 1
    while lanes < size and lanes < THREADS:
        lanes *= 2
    return lanes


def row_threads(size: int) -> int:
    """Block size of the kernels that reduce one contiguous row a block (loss.cu, softmax.cu): a
    power of two from 32 (a warp) to THREADS covering `size`."""
    return max(32, row_lanes(size))


def row_walk_blocks(rows: int, size: int, contiguous: bool = True, int_walk: bool = True) -> int:
    """Blocks of THREADS for kernels/rows.cuh's for_each_row over `rows` rows of `size` elements:
    row_lanes(size) threads a contiguous row, else one. int_walk: the kernel walks a row with an int
    index stepping by its lanes (distance.cu, multi_margin_rows), which a row of more than 2^31 - lanes
    elements would overflow past its end: ValueError (before any launch)."""
    lanes = row_lanes(size) if contiguous else 1
    if int_walk:
        check_int_walk(size, lanes)
    return blocks_for(rows * lanes)


# split_row_lanes: strided rows split over a block where a thread a row leaves the GPU short of
# SPLIT_BLOCKS_PER_SM blocks an SM; a warp's lanes at most a warp of rows, at least a 32-byte sector's
# elements of the dtype, and no segment shorter than MIN_SEGMENT elements (its combine would cost more
# than its walk saves).
SPLIT_BLOCKS_PER_SM = 2
WARP = 32
SECTOR_BYTES = 32
MIN_SEGMENT = 4


def split_row_lanes(rows: int, size: int, inner: int, itemsize: int, sms: int) -> int:
    """The rows a block of THREADS takes in kernels/rows.cuh's for_each_split_row (the softmax and
    cross entropy _split kernels) for `rows` strided rows (inner > 1) of `size` elements, each row split
    over THREADS // lanes segments; 0 for the kernels that walk a row with one thread, where those
    rows' blocks fill `sms` SMs (segmentation maps: (N, C, H, W) of many positions). The lanes start at
    the warp's neighbouring rows (the power of two covering inner, at most WARP: coalesced), halve while
    the blocks fall short of the SMs down to a sector's elements (a warp's reads still whole sectors), and
    double while a segment would take fewer than MIN_SEGMENT elements (0 if that leaves one segment)."""
    blocks_wanted = SPLIT_BLOCKS_PER_SM * sms
    if blocks_for(rows) >= blocks_wanted:
        return 0
    lanes = min(WARP, row_lanes(inner))
    sector = max(1, SECTOR_BYTES // itemsize)
    while lanes > sector and -(-rows // lanes) < blocks_wanted:
        lanes //= 2
    while lanes < THREADS and THREADS // lanes * MIN_SEGMENT > size:
        lanes *= 2
    return lanes if lanes < THREADS else 0


def check_int_walk(size: int, lanes: int) -> None:
    """ValueError (before any launch) where a kernel walking a row of `size` elements with an int index
    `lanes` apart (the row kernels, softmax's and cross entropy's blocks, row_norm's packs) would
    overflow it past the row's end: a row of more than 2^31 - lanes elements."""
    if size + lanes - 1 > INT32_MAX:
        raise ValueError(f"the row kernels walk a row with 32-bit ints {lanes} apart: a row of {size} elements "
                         f"(more than 2^31 - {lanes}) would overflow them")


ELEMENTS_PER_THREAD = 4   # kernels/common.cuh: for_each_element's elements a thread per round


def elementwise_blocks(count: int) -> int:
    """Blocks of THREADS along x for for_each_element over `count` elements; none for none (a map
    writes only its own elements: backend.launch then launches nothing, where one block ran idle)."""
    return blocks_for(-(-int(count) // ELEMENTS_PER_THREAD)) if count else 0


def plane_pixel_grid(planes, pixels):
    """for_each_plane_pixel's grid (kernels/plane_walk.cuh) over `planes` planes of `pixels` each: x over
    a plane's pixels, y over the planes, or over groups of THREADS // pixels planes where a plane
    is at most half a block."""
    if not pixels:
        return 0, 0   # nothing to launch
    if 2 * pixels > THREADS:
        return blocks_for(pixels), min(planes, MAX_GRID_Y)
    return 1, min(-(-planes // (THREADS // pixels)), MAX_GRID_Y)

GROUP_PLANES = 256   # kernels/plane_walk.cuh: the most small planes a block's group takes


def plane_elements(dtype) -> int:
    """kernels/plane_walk.cuh PLANE_ELEMENTS: the elements a thread of for_each_plane_element loads a
    round, float16 twice ELEMENTS_PER_THREAD (16 bytes in flight, as float32's 4)."""
    return 2 * ELEMENTS_PER_THREAD if np.dtype(dtype) == np.float16 else ELEMENTS_PER_THREAD


def plane_walk_grid(planes, inner, dtype):
    """for_each_plane_element's grid (kernels/plane_walk.cuh) over `planes` planes of `inner` elements:
    x over a plane of at least SPAN = THREADS * plane_elements(dtype) elements (a round a thread), or
    min(SPAN // inner, GROUP_PLANES) smaller planes a block; y over the groups of planes."""
    if not inner:
        return 0, 0   # nothing to launch
    elements = plane_elements(dtype)
    span = THREADS * elements
    if inner >= span:
        return blocks_for(-(-inner // elements)), min(planes, MAX_GRID_Y)
    return 1, min(-(-planes // min(span // inner, GROUP_PLANES)), MAX_GRID_Y)


INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
# The kernel scalars' conversions by their arguments (i32's, i64's, real's and acc's): launchers
# pass the same sizes and hyper-parameters step after step, and making the NumPy scalars costs
# more than a launch's checks of them. Values that compare equal have the same int() and, but for
# a float zero's sign (real() keys zeros by it too), the same float; a refused value is never kept.
# Each memo is emptied when it reaches SCALAR_MEMO_SIZE entries.
_i32_memo: dict = {}
_i64_memo: dict = {}
_real_memo: dict = {}
SCALAR_MEMO_SIZE = 4096


def _remembered(memo: dict, key, convert) -> tuple:
    """convert(key), kept in `memo`; an unhashable key is converted as it is."""
    try:
        known = memo.get(key)
    except TypeError:   # an unhashable argument: converted (or refused) as it is
        return convert(key)
    if known is None:
        known = convert(key)
        if len(memo) >= SCALAR_MEMO_SIZE:
            memo.clear()
        memo[key] = known
    return known


def i32(*values):
    """Python ints as kernel `int` arguments; a value past 32 bits is refused, never wrapped."""
    return _remembered(_i32_memo, values, _int32_scalars)


def i64(*values):
    """Python ints as kernel `long long` arguments; a value past 64 bits is refused, never wrapped."""
    return _remembered(_i64_memo, values, _int64_scalars)


def _int32_scalars(values) -> tuple:
    return _int_scalars(values, np.int32, INT32_MIN, INT32_MAX, "32-bit int")


def _int64_scalars(values) -> tuple:
    return _int_scalars(values, np.int64, INT64_MIN, INT64_MAX, "64-bit long long")


def _int_scalars(values, kind, low: int, high: int, what: str) -> tuple:
    ints = tuple(map(int, values))
    if ints and (min(ints) < low or max(ints) > high):
        v = next(v for v, i in zip(values, ints) if not low <= i <= high)
        raise ValueError(f"{v} does not fit the kernels' {what} arguments; the size is too large for them")
    return tuple(map(kind, ints))


def real(dtype, *values):
    """Python numbers as kernel REAL scalars (CuPy's rule: the NumPy scalar of the declared type)."""
    key = (dtype, values)
    if 0 in values:   # -0.0 == 0.0, but the kernels get a zero's sign: the signs are part of the key
        key += (tuple(math.copysign(1.0, v) for v in values),)
    return _remembered(_real_memo, key, _real_scalars)


def _real_scalars(key) -> tuple:
    return tuple(map(np.dtype(key[0]).type, key[1]))


def acc(dtype, *values):
    """Python numbers as kernel acc_t scalars of a kernel built for `dtype` (float32 for float16)."""
    return real(compute_dtype(dtype), *values)


@dataclass(frozen=True)
class Launch:
    """One kernel launch, decided before it runs: kernels/<family>.cu:<kernel> on `grid` x `block`.
    Plans made of these are what the launchers run and what cnn_gpu.roofline models."""
    family: str
    kernel: str
    grid: tuple
    block: tuple = (THREADS, 1, 1)
    shared_mem: int = 0          # dynamic shared memory in bytes (the GEMM tiles are static)
