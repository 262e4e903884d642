"""The shapes a benchmark case runs on, and the named shape sets of `cnn-gpu bench --shapes`."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..functional.fractional_pool import _output_size as fractional_output_size
from ..functional.geometry import conv_geometry, pool3d_geometry, pool_geometry


@dataclass(frozen=True)
class ConvShape:
    """A convolution layer in the issue's notation (N, C, H, W, K, R, stride, pad); square filters."""
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    stride: int = 1
    pad: int = 0

    @property
    def label(self) -> str:
        return f"{self.N},{self.C},{self.H},{self.W},{self.K},{self.R},{self.stride},{self.pad}"

    def geometry(self):
        return conv_geometry((self.N, self.C, self.H, self.W), (self.K, self.C, self.R, self.R),
                             self.stride, self.pad)


@dataclass(frozen=True)
class PoolShape:
    N: int
    C: int
    H: int
    W: int
    kernel: int
    stride: int
    pad: int = 0

    @property
    def label(self) -> str:
        return f"{self.N},{self.C},{self.H},{self.W} k{self.kernel} s{self.stride} p{self.pad}"

    def geometry(self):
        return pool_geometry((self.N, self.C, self.H, self.W), self.kernel, self.stride, self.pad)


@dataclass(frozen=True)
class VolumeShape:
    """A batch of volumes (N, C, D, H, W) -- video clips, medical scans -- the 3-D layers' input, and its
    pools' cubic window."""
    N: int
    C: int
    D: int
    H: int
    W: int
    kernel: int = 2
    stride: int = 2
    pad: int = 0

    @property
    def label(self) -> str:
        return f"{self.N},{self.C},{self.D},{self.H},{self.W} k{self.kernel} s{self.stride} p{self.pad}"

    def geometry(self):
        return pool3d_geometry((self.N, self.C, self.D, self.H, self.W), self.kernel, self.stride, self.pad)


@dataclass(frozen=True)
class FractionalShape:
    """Fractional max pooling of a batch of images (N, C, H, W) or volumes (N, C, D, H, W), `size` their
    (H, W) or (D, H, W): windows of `kernel` taps an axis to output_ratio `ratio` (PyTorch's documented
    nn.FractionalMaxPool2d(3, output_ratio=0.5) and its 3-D form by default)."""
    N: int
    C: int
    size: tuple
    kernel: int = 3
    ratio: float = 0.5

    @property
    def label(self) -> str:
        return f"{self.N},{self.C},{','.join(map(str, self.size))} k{self.kernel} r{self.ratio}"

    @property
    def x_shape(self) -> tuple:
        return (self.N, self.C, *self.size)

    @property
    def y_shape(self) -> tuple:
        rank = len(self.size)
        out_size = fractional_output_size(f"fractional_max_pool{rank}d", self.x_shape, (self.kernel,) * rank, None,
                                          self.ratio)
        return (self.N, self.C, *out_size)


@dataclass(frozen=True)
class LossShape:
    N: int
    classes: int

    @property
    def label(self) -> str:
        return f"{self.N}x{self.classes}"


@dataclass(frozen=True)
class ModelShape:
    """A training step of one of cnn_gpu.models' networks ("cnn", the default, "resnet" or
    "resnet18") on a batch of random images."""
    model: str
    batch: int
    image_shape: tuple = (1, 8, 8)     # scikit-learn's digits, what `cnn-gpu train` uses
    classes: int = 10

    @property
    def label(self) -> str:
        return f"{self.model} {self.batch}x{'x'.join(map(str, self.image_shape))}"


@dataclass(frozen=True)
class ShapeSet:
    description: str
    conv: tuple = ()
    pool: tuple = ()
    loss: tuple = ()
    model: tuple = ()
    volume: tuple = ()
    fractional2d: tuple = ()
    fractional3d: tuple = ()

    def with_batch(self, batch: int) -> "ShapeSet":
        """The same shapes at batch size `batch` (`cnn-gpu bench --batch`)."""
        if batch < 1:
            raise ValueError(f"--batch must be >= 1, got {batch}")
        return replace(self, description=f"{self.description} (batch {batch})",
                       conv=tuple(replace(s, N=batch) for s in self.conv),
                       pool=tuple(replace(s, N=batch) for s in self.pool),
                       loss=tuple(replace(s, N=batch) for s in self.loss),
                       volume=tuple(replace(s, N=batch) for s in self.volume),
                       fractional2d=tuple(replace(s, N=batch) for s in self.fractional2d),
                       fractional3d=tuple(replace(s, N=batch) for s in self.fractional3d),
                       model=tuple(replace(s, batch=batch) for s in self.model))


RESNET_LAYERS = tuple(ConvShape(*dims) for dims in (
    (16, 3, 224, 224, 64, 7, 2, 3), (16, 64, 56, 56, 64, 3, 1, 1), (16, 64, 56, 56, 256, 1, 1, 0),
    (16, 256, 56, 56, 128, 1, 2, 0), (16, 128, 28, 28, 128, 3, 1, 1), (16, 256, 14, 14, 256, 3, 1, 1),
    (16, 1024, 14, 14, 512, 1, 2, 0), (16, 512, 7, 7, 512, 3, 1, 1), (16, 512, 7, 7, 2048, 1, 1, 0),
    (16, 128, 56, 56, 128, 3, 2, 1), (16, 64, 112, 112, 128, 3, 1, 1)))

# Issue 2's CPU table (N, C, H, W, K, R), stride 1, "same" padding R//2.
CPU_LAYERS = tuple(ConvShape(N, C, H, W, K, R, 1, R // 2) for N, C, H, W, K, R in (
    (32, 3, 32, 32, 32, 3), (32, 32, 16, 16, 64, 3), (64, 64, 8, 8, 128, 3), (32, 16, 28, 28, 16, 5),
    (32, 64, 14, 14, 64, 1)))

SHAPE_SETS = {
    "tiny": ShapeSet(
        "a few small shapes for the emulator and the tests",
        conv=(ConvShape(2, 3, 8, 8, 4, 3, 1, 1), ConvShape(2, 4, 7, 7, 6, 3, 2, 1)),
        pool=(PoolShape(2, 3, 8, 8, 2, 2), PoolShape(2, 3, 7, 7, 3, 2, 1)),
        loss=(LossShape(8, 10),),
        model=(ModelShape("cnn", 4),),
        volume=(VolumeShape(2, 3, 4, 8, 8), VolumeShape(1, 4, 5, 7, 7, 3, 2, 1)),
        fractional2d=(FractionalShape(2, 3, (8, 8)), FractionalShape(2, 4, (9, 7))),
        fractional3d=(FractionalShape(2, 3, (6, 8, 8)), FractionalShape(1, 4, (5, 7, 7)))),
    "default": ShapeSet(
        "small layers that run in well under a minute on a CPU",
        conv=(ConvShape(8, 16, 32, 32, 32, 3, 1, 1), ConvShape(8, 32, 16, 16, 64, 3, 2, 1),
              ConvShape(8, 64, 8, 8, 64, 1, 1, 0)),
        pool=(PoolShape(8, 32, 32, 32, 2, 2), PoolShape(8, 64, 16, 16, 3, 2, 1)),
        loss=(LossShape(128, 10), LossShape(64, 1000)),
        model=(ModelShape("cnn", 32), ModelShape("resnet", 32)),
        volume=(VolumeShape(4, 32, 8, 28, 28),),   # a C3D-like layer on 8-frame clips
        fractional2d=(FractionalShape(8, 32, (32, 32)),), fractional3d=(FractionalShape(4, 32, (8, 28, 28)),)),
    "resnet": ShapeSet(
        "the ResNet/DeepBench layers of issue 5, ResNet's stem max pool and final average pool; models on 3x32x32",
        conv=RESNET_LAYERS,
        pool=(PoolShape(16, 64, 112, 112, 3, 2, 1), PoolShape(16, 2048, 7, 7, 7, 7)),
        loss=(LossShape(256, 1000),),
        model=(ModelShape("cnn", 32, (3, 32, 32)), ModelShape("resnet", 32, (3, 32, 32))),
        # R3D-18's stem output on 8-frame 112x112 clips, a padded 3x3x3 pool of stride 2
        volume=(VolumeShape(4, 64, 8, 56, 56, 3, 2, 1),),
        # fractional pooling in place of the stem max pools: of ResNet's stem output and R3D-18's
        fractional2d=(FractionalShape(16, 64, (112, 112)),), fractional3d=(FractionalShape(4, 64, (8, 56, 56)),)),
    "resnet18": ShapeSet(
        "a CIFAR ResNet-18 training step (forward, loss, backward, SGD) at batch 128 on 3x32x32 images",
        model=(ModelShape("resnet18", 128, (3, 32, 32)),)),
    "cpu": ShapeSet(
        "issue 2's NumPy-vs-PyTorch table (stride 1, padding R//2) and the default model",
        conv=CPU_LAYERS,
        model=(ModelShape("cnn", 32),),
        volume=(VolumeShape(2, 16, 32, 64, 64),),   # patches of a CT scan, as a 3-D U-Net's first level
        # after the table's first layer (a CIFAR network's first pool), and on the scan patches
        fractional2d=(FractionalShape(32, 32, (32, 32)),), fractional3d=(FractionalShape(2, 16, (32, 64, 64)),)),
}
