"""cupy.cuda on the CPU: the simulated GPUs (CUPY_SIM_ARCH, default 80: the emulator's own default,
whose kernel builds the simulator then shares; CUPY_SIM_DEVICES, default 1), their current device,
streams and events (the emulator runs every kernel to its end at the launch, so a stream is always
done and an event's time is the host's clock)."""
from __future__ import annotations

import threading
import time

from . import device, memory, nvrtc, runtime  # noqa: F401  (cupy.cuda.<module>)


def device_arch(index: int) -> int:
    return int(runtime._ARCHS[index])


class Device:
    def __init__(self, index=None):
        self.id = runtime.getDevice() if index is None else int(index)
        if not 0 <= self.id < runtime.getDeviceCount():
            raise runtime.CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        self._previous = []

    def use(self):
        runtime.setDevice(self.id)

    def __enter__(self):
        self._previous.append(runtime.getDevice())
        runtime.setDevice(self.id)
        return self

    def __exit__(self, *exc):
        runtime.setDevice(self._previous.pop())

    def synchronize(self):
        pass

    @property
    def compute_capability(self):
        return str(device_arch(self.id))

    @property
    def attributes(self):
        return {"MultiProcessorCount": runtime._SMS, "ComputeCapabilityMajor": device_arch(self.id) // 10,
                "ComputeCapabilityMinor": device_arch(self.id) % 10}

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class Stream:
    """A stream, current while used (per thread, as CuPy's); the emulator has finished its work
    by the time a launch returns, so synchronising waits for nothing."""
    null = None

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr = 0 if null else id(self)
        self._outer = []

    def synchronize(self):
        pass

    def use(self):
        _streams.current = self
        return self

    def __enter__(self):
        self._outer.append(get_current_stream())
        return self.use()

    def __exit__(self, *exc):
        _streams.current = self._outer.pop()

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event


Stream.null = Stream(null=True)
_streams = threading.local()


def get_current_stream(device_id=None):
    return getattr(_streams, "current", Stream.null)


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.disable_timing, self._time = disable_timing, None

    def record(self, stream=None):
        self._time = time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded events (the host's time: the emulator is synchronous)."""
    if start_event.disable_timing or end_event.disable_timing:
        raise runtime.CUDARuntimeError("cudaErrorInvalidResourceHandle: an event made with disable_timing")
    if start_event._time is None or end_event._time is None:
        raise runtime.CUDARuntimeError("cudaErrorInvalidResourceHandle: an event not recorded")
    return (end_event._time - start_event._time) * 1e3


