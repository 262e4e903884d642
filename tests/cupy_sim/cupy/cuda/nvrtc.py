"""cupy.cuda.nvrtc on the CPU. Its version matches no real libnvrtc, so cnn_gpu.nvrtc.cupy_compiler()
finds none and the cuda backend hands CuPy the source (RawModule(code=)), which the emulator builds."""


def getVersion():
    return (0, 0)


def getSupportedArchs():
    return (50, 60, 70, 75, 80, 86, 89, 90)
