"""The process world: MPI's COMM_WORLD when launched under mpiexec, else a single process."""
from __future__ import annotations

import math
import os
import sys
import time
import traceback

import numpy as np

# How long one collective of the training loop may wait for the other ranks before the job is
# aborted (a rank that died or hangs must not leave the others waiting forever); the environment
# variable CNN_GPU_COLLECTIVE_TIMEOUT overrides it.
DEFAULT_TIMEOUT_S = 300.0
# Environment variables that launchers set for each process: MPICH/Hydra, Open MPI, Slurm.
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                       "HYDI_CONTROL_FD", "PMI_FD")


ABORT_GRACE_S = 0.5


class CollectiveTimeout(RuntimeError):
    """A collective did not complete in time: some rank died, hangs or took another path."""


class ReplicaMismatch(ValueError):
    """Ranks disagree about the model or the settings: reducing would mix unrelated numbers."""


def launched_by_mpi() -> bool:
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def launcher_rank() -> int | None:
    """This process's rank as its MPI launcher set it in the environment (MPICH/Hydra, PMIx, Open
    MPI), without joining MPI; None where no launcher said."""
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def find_mpiexec() -> str:
    """The mpiexec of mpi4py's MPI (the mpich wheel puts it next to the Python executable), else
    the one on PATH; RuntimeError naming the install when mpi4py or mpiexec is missing."""
    import shutil
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise RuntimeError("needs mpi4py and an MPI: pip install 'cnn_gpu[mpi]'") from None
    beside_python = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside_python if os.access(beside_python, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec next to Python or on PATH: pip install 'cnn_gpu[mpi]'")
    return found


def poll_until(done, timeout_s: float) -> bool:
    """Call done() (a test that never blocks) with growing pauses until it returns true (then
    True) or `timeout_s` seconds have passed (then False)."""
    deadline = time.monotonic() + timeout_s
    pause = 1e-5
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)
    return True


class World:
    """Rank, size and the collectives the library needs. `comm` is an mpi4py communicator, or
    None for a single process."""

    def __init__(self, comm=None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.comm = comm
        self.timeout_s = _checked_timeout(timeout_s, "timeout_s")
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.local_rank = self._local_rank()

    def _local_rank(self) -> int:
        if self.comm is None:
            return 0
        from mpi4py import MPI
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return local.Get_rank()
        finally:
            local.Free()

    # --- collectives with a deadline ------------------------------------------------------------

    def wait(self, request, what: str) -> None:
        """Poll a non-blocking collective until it completes or the timeout passes. After a
        CollectiveTimeout the world is unusable (the collective is still pending): end the job."""
        if not poll_until(request.Test, self.timeout_s):
            raise self.timeout_error(what)

    def timeout_error(self, what: str) -> CollectiveTimeout:
        """The error of the collective `what` (MPI or NCCL) when it outlived the timeout."""
        return CollectiveTimeout(f"rank {self.rank}: {what} did not complete within {self.timeout_s:g} s "
                                 f"(another rank died, hangs, or is running a different step)")

    def allgather_object(self, obj, what: str = "allgather"):
        """Every rank's `obj` (picklable), in rank order."""
        if self.comm is None:
            return [obj]
        import pickle
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        sizes = np.empty(self.size, dtype=np.int64)
        self.wait(self.comm.Iallgather(np.array([payload.size], dtype=np.int64), sizes), what)
        gathered = np.empty(int(sizes.sum()), dtype=np.uint8)
        from mpi4py import MPI
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        self.wait(self.comm.Iallgatherv(payload, [gathered, sizes, offsets, MPI.BYTE]), what)
        return [pickle.loads(gathered[o:o + s].tobytes()) for o, s in zip(offsets, sizes)]

    def barrier(self) -> None:
        if self.comm is not None:
            self.wait(self.comm.Ibarrier(), "barrier")

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort); a no-op for a single process."""
        if self.comm is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            # mpiexec forwards each rank's output through its proxies; MPI_Abort kills them at once,
            # so give them a moment to deliver this rank's last words (seen lost under load)
            time.sleep(ABORT_GRACE_S)
            self.comm.Abort(code)


_world: World | None = None


def _checked_timeout(value, source: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a number of seconds, got {value!r}") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{source} must be a positive finite number of seconds, got {value!r}")
    return seconds


def _default_timeout() -> float:
    value = os.environ.get("CNN_GPU_COLLECTIVE_TIMEOUT")
    return DEFAULT_TIMEOUT_S if value is None else _checked_timeout(value, "CNN_GPU_COLLECTIVE_TIMEOUT")


def init(timeout_s: float | None = None, abort_on_exception: bool = True) -> World:
    """Join the MPI world (idempotent; a later call with `timeout_s` changes the timeout). A
    single-process world when mpi4py is absent or the process was not started by an MPI launcher
    (mpi4py is then not even imported). With `abort_on_exception`, an uncaught exception on any
    rank, a CollectiveTimeout included, prints that rank's traceback and aborts the whole job
    instead of leaving the other ranks waiting in a collective."""
    global _world
    if timeout_s is not None:
        timeout_s = _checked_timeout(timeout_s, "timeout_s")
    if _world is not None:
        if timeout_s is not None:
            _world.timeout_s = timeout_s
        return _world
    comm = None
    if launched_by_mpi():
        try:
            from mpi4py import MPI
        except ImportError:
            raise RuntimeError("started by an MPI launcher, but mpi4py does not import; "
                               "pip install 'cnn_gpu[mpi]'") from None
        comm = MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
    _world = World(comm, _default_timeout() if timeout_s is None else timeout_s)
    if comm is not None and abort_on_exception:
        _install_abort_hook(_world)
    return _world


def _install_abort_hook(w: World) -> None:
    previous = sys.excepthook

    def abort_job(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
        else:
            message = "".join(traceback.format_exception(kind, value, tb))
            sys.stderr.write("".join(f"[rank {w.rank}] {line}\n" for line in message.rstrip().splitlines()))
            sys.stderr.write(f"[rank {w.rank}] aborting all {w.size} ranks\n")
        w.abort(1)

    sys.excepthook = abort_job


def world() -> World:
    """The world `init()` joined (joining it first if needed)."""
    return _world if _world is not None else init()


def rank() -> int:
    return world().rank


def world_size() -> int:
    return world().size


def local_rank() -> int:
    """This process's index among the ranks on its machine: the GPU it uses."""
    return world().local_rank


def barrier() -> None:
    world().barrier()


def check_replicas(model, settings: dict | None = None) -> None:
    """Raise ReplicaMismatch, naming the ranks and what differs, when the ranks' parameter names,
    shapes and dtypes, or `settings` (hyper-parameters), are not the same on every rank."""
    w = world()
    mine = {"parameters": [(name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()],
            "settings": dict(settings or {})}
    everyone = w.allgather_object(mine, "the replica check")
    problems = []
    for other_rank, theirs in enumerate(everyone):
        for key in ("parameters", "settings"):
            if theirs[key] != everyone[0][key]:
                problems.append(f"rank {other_rank} has other {key} than rank 0: {_difference(everyone[0][key], theirs[key])}")
    if problems:
        raise ReplicaMismatch("; ".join(problems))


def _difference(reference, other) -> str:
    if isinstance(reference, dict):
        keys = sorted(set(reference) | set(other), key=str)
        return ", ".join(f"{k}={other.get(k)!r} (rank 0: {reference.get(k)!r})" for k in keys
                         if reference.get(k) != other.get(k))
    if len(reference) != len(other):
        return f"{len(other)} parameters (rank 0: {len(reference)})"
    return ", ".join(f"{o} (rank 0: {r})" for r, o in zip(reference, other) if r != o)
