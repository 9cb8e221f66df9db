"""The launcher check: the MPI library, the ranks and the allreduce bandwidth."""
import sys
import time

import numpy as np

from . import DataParallel


def check():
    """`mpiexec -n 2 python -m fastnn.distribution --check`: the MPI library, the ranks, and
    the allreduce bandwidth of a 16 MB float32 buffer (the size of a 4M-weight gradient)."""
    dist = DataParallel()
    comm, mpi = dist.comm, dist._mpi
    if dist.rank == 0:
        print(f"MPI library: {mpi.Get_library_version().splitlines()[0].strip()}")
        print(f"mpi4py {__import__('mpi4py').__version__}, ranks: {dist.size}")
    names = comm.gather(mpi.Get_processor_name(), root=0)
    buf = np.ones(4 << 20, np.float32)
    comm.Allreduce(mpi.IN_PLACE, buf, op=mpi.SUM)         # warm up
    comm.Barrier()
    start, rounds = time.perf_counter(), 10
    for _ in range(rounds):
        comm.Allreduce(mpi.IN_PLACE, buf, op=mpi.SUM)
    seconds = comm.allreduce(time.perf_counter() - start, op=mpi.MAX) / rounds
    if dist.rank == 0:
        for r, name in enumerate(names):
            print(f"  rank {r}: {name}")
        # bus bandwidth as NCCL/MPI benchmarks report it: 2 (n-1)/n of the buffer per rank
        moved = buf.nbytes * 2 * (dist.size - 1) / max(dist.size, 1)
        print(f"allreduce of {buf.nbytes / 2**20:.0f} MiB float32: {seconds * 1e3:.2f} ms "
              f"per call, bus bandwidth {moved / seconds / 1e9:.2f} GB/s")



if __name__ == "__main__":
    if sys.argv[1:] != ["--check"]:
        sys.exit("usage: mpiexec -n N python -m fastnn.distribution --check")
    check()
