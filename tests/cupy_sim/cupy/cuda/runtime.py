"""cupy.cuda.runtime on the CPU: the simulated GPUs' count, properties and the current device."""
from __future__ import annotations

import os
import threading

_ARCHS = [a.strip() for a in os.environ.get("CUPY_SIM_ARCH", "80").split(",")] * int(
    os.environ.get("CUPY_SIM_DEVICES", "1"))
_SMS = 132
_current = threading.local()


class CUDARuntimeError(RuntimeError):
    pass


def getDevice():
    return getattr(_current, "device", 0)


def setDevice(device):
    if not 0 <= device < len(_ARCHS):
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    _current.device = device


def getDeviceCount():
    return len(_ARCHS)


def driverGetVersion():
    return 12080


def runtimeGetVersion():
    return 12080


# cudaDeviceAttr numbers cnn_gpu reads
_ATTRIBUTE_VALUES = {13: 1_980_000, 16: _SMS, 36: 2_619_000, 37: 5120}


def deviceGetAttribute(attribute, device):
    arch = int(_ARCHS[device])
    if attribute == 75:
        return arch // 10
    if attribute == 76:
        return arch % 10
    if attribute not in _ATTRIBUTE_VALUES:
        raise CUDARuntimeError(f"cupy_sim: device attribute {attribute} is not simulated")
    return _ATTRIBUTE_VALUES[attribute]


def getDeviceProperties(device):
    arch = int(_ARCHS[device])
    return {"name": f"Simulated GPU sm_{arch} (tests/cupy_sim)".encode(), "major": arch // 10, "minor": arch % 10,
            "multiProcessorCount": _SMS, "clockRate": 1_980_000, "memoryClockRate": 2_619_000,
            "memoryBusWidth": 5120, "l2CacheSize": 50 << 20, "regsPerMultiprocessor": 65536,
            "sharedMemPerMultiprocessor": 228 << 10, "maxThreadsPerMultiProcessor": 2048,
            "maxBlocksPerMultiProcessor": 32, "totalGlobalMem": 80 << 30}
