"""cupy.cuda.memory on the CPU: an allocation (PooledMemory, one per root array, shared by its views)
and a pointer into it, as cnn_gpu's aliasing checks read them."""
from __future__ import annotations


class PooledMemory:
    def __init__(self, ptr: int, size: int, device_id: int):
        self.ptr, self.size, self.device_id = ptr, size, device_id


class Memory(PooledMemory):
    pass


class MemoryPointer:
    def __init__(self, mem: PooledMemory, ptr: int):
        self.mem, self.ptr = mem, ptr
        self.device_id = mem.device_id

