"""Data-parallel training over MPI on one machine: the seed MLP and CNN, one process with
T threads against T ranks with one thread each, in one run (issue 20).

    PYTHONPATH=. python benchmarks/distributed.py [--threads 2] [--samples 60000] [--rounds 2]
        [--repeats 3]

prints a markdown table: epoch seconds of each (min and median over the interleaved runs),
their ratio, the share of the ranks' epoch spent in the gradient allreduce (with a shared arena:
the sums, the barriers and the shard's update; the fused Dense stack's ranks exchanging
activations: its barriers only, the shards' gradients and updates being the arithmetic one
process does too) with its time per step, and the least of it
spent not waiting at the barriers for the other rank (the step's C part counts its waits:
what remains is the sums, the update and the barriers' own cost, which depend little on
other jobs on the machine), and a model of that allreduce at 4-64 ranks from the bandwidth
and latency measured here. Needs mpi4py and
mpiexec (pip install ".[mpi]")."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median

WORKER = r'''
import json, os, sys, time
import numpy as np
import fastnn
from fastnn import distribution, layers as L
if os.environ.get("FASTNN_DP") == "1":
    distribution.set_distribution(distribution.DataParallel())
kind, samples, rounds, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
(x, y), _ = fastnn.datasets.mnist.load_data()
x, y = x[:samples].astype(np.float32) / 255, y[:samples]
fastnn.utils.set_random_seed(0)
if kind == "mlp_adam":      # benchmarks/README.md's workloads
    x = x.reshape(-1, 784)
    model = fastnn.Sequential([fastnn.Input((784,)), L.Dense(128, activation="relu"),
                               L.Dense(64, activation="relu"), L.Dense(10, activation="softmax")])
    model.compile(fastnn.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
else:                       # the seed tutorial's CNN, without its BatchNormalization
    x = x.reshape(-1, 28, 28, 1)
    model = fastnn.Sequential([fastnn.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"),
                               L.MaxPooling2D(), L.Flatten(), L.Dense(100, activation="relu"),
                               L.Dense(10, activation="softmax")])
    model.compile(fastnn.optimizers.SGD(0.05), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
reduce_seconds = [0.0]
d = distribution.distribution()
if d is not None:           # time the allreduce (the communication cost), both paths
    original = d.allreduce_sum
    def timed(host, scale=1.0):
        start = time.perf_counter()
        original(host, scale)
        reduce_seconds[0] += time.perf_counter() - start
    d.allreduce_sum = timed
    for name in ("reduce", "step"):     # a shared arena: the sums, barriers and shard step
        def wrap(method):
            def timed_method(self, *args):
                start = time.perf_counter()
                got = method(self, *args)
                if getattr(self, "native_step", None) is None:  # (else counted in C)
                    reduce_seconds[0] += time.perf_counter() - start
                return got
            return timed_method
        setattr(distribution._SharedArena, name, wrap(getattr(distribution._SharedArena, name)))


def native_seconds(reset=False):
    """(seconds in the shared arena's C steps (SharedStep, also called by the fused stack),
    of which waiting at its barriers for the other ranks)."""
    total = waited = 0.0
    for arena in getattr(d, "_arenas", {}).values():
        step = getattr(arena, "native_step", None)
        if step is not None:
            total, waited = total + step.seconds, waited + step.waited
            if reset:
                step.seconds = step.waited = 0.0
    return total, waited


model.fit(x[:2048], y[:2048], batch_size=32, epochs=1, verbose=0)       # warm up
runs = []
for _ in range(rounds):
    reduce_seconds[0] = 0.0
    native_seconds(reset=True)
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    native, waited = native_seconds()
    runs.append((wall, reduce_seconds[0] + native, cpu, waited))
if distribution.rank() == 0:
    json.dump({"runs": runs, "samples": len(x), "params": model.count_params(),
               "fused": getattr(model, "_dense_runner", None) is not None},
              open(out, "w"))
'''

PROBE = r'''
import json, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
def per_call(nbytes, rounds):
    buf = np.ones(max(nbytes // 4, 1), np.float32)
    comm.Allreduce(MPI.IN_PLACE, buf)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(rounds):
        comm.Allreduce(MPI.IN_PLACE, buf)
    return comm.allreduce(time.perf_counter() - start, op=MPI.MAX) / rounds
latency = per_call(4, 2000)
big = per_call(16 << 20, 10)
if comm.rank == 0:
    n = comm.size
    bandwidth = (16 << 20) * 2 * (n - 1) / n / (big - 2 * (n - 1) * latency)
    json.dump({"latency": latency, "bandwidth": bandwidth}, open(sys.argv[1], "w"))
'''


def run(cmd, env):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")


def ring_allreduce(nbytes, ranks, latency, bandwidth):
    """Seconds for a ring allreduce: 2 (n - 1) steps, each a latency and 1/n of the data."""
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * nbytes / bandwidth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--rounds", type=int, default=2, help="epochs timed in each process")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved process pairs")
    ap.add_argument("--workloads", default="mlp_adam,cnn")
    ap.add_argument("--unsharded", action="store_true",
                    help="also time the ranks with FASTNN_MPI_SHARDED=0 (each rank updating "
                         "every weight), interleaved with the rest")
    args = ap.parse_args(argv)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                           os.environ.get("PATH", ""))
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install '.[mpi]'")
    env = dict(os.environ)
    env.setdefault("FASTNN_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data", "mnist"))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        worker, probe = os.path.join(tmp, "worker.py"), os.path.join(tmp, "probe.py")
        open(worker, "w").write(WORKER)
        open(probe, "w").write(PROBE)
        out = os.path.join(tmp, "net.json")
        run([mpiexec, "-n", str(args.threads), sys.executable, probe, out],
            dict(env, OMP_NUM_THREADS="1"))
        net = json.load(open(out))
        rows = []
        for kind in args.workloads.split(","):
            results = {"one": [], "one1": [], "ranks": [], "ranks0": []}
            ranks = [mpiexec, "-n", str(args.threads), sys.executable]
            setups = [("one", [sys.executable], 1, args.threads, "0"),
                      ("one1", [sys.executable], 1, 1, "0"),
                      ("ranks", ranks, 1, 1, "1")]
            if args.unsharded:
                setups.append(("ranks0", ranks, 0, 1, "1"))
            for _ in range(args.repeats):       # interleaved: load changes hit all alike
                for label, cmd, sharded, threads, dp in setups:
                    out = os.path.join(tmp, f"{kind}-{label}.json")
                    run(cmd + [worker, kind, str(args.samples), str(args.rounds), out],
                        dict(env, OMP_NUM_THREADS=str(threads), FASTNN_DP=dp,
                             FASTNN_MPI_SHARDED=str(sharded)))
                    got = json.load(open(out))
                    results[label] += got.pop("runs")
                    results[label + "_info"] = got
            rows.append((kind, results))
    print(f"## Data-parallel fit on one machine ({os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}, {args.repeats} x {args.rounds} epochs each, "
          "interleaved)\n")
    print(f"| workload | 1 process × {args.threads} threads (min / median s) | 1 process × 1 "
          f"thread | {args.threads} ranks × 1 thread | ranks / process × {args.threads} "
          "threads (best, median) | allreduce share of the ranks' epoch (per step; least not "
          "waiting) | fused Dense stack |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for kind, r in rows:
        one, one1 = sorted(t for t, *_ in r["one"]), sorted(t for t, *_ in r["one1"])
        ranks = sorted(r["ranks"])
        best, mid = one[0] / ranks[0][0], median(one) / median(t for t, *_ in ranks)
        share = median(a / t for t, a, *_ in ranks)
        steps = -(-r["ranks_info"]["samples"] // 32)
        per_step = median(a for _, a, *_ in ranks) / steps
        work = min(a - w for _, a, _, w in ranks) / steps
        print(f"| {kind} | {one[0]:.2f} / {median(one):.2f} | {one1[0]:.2f} / "
              f"{median(one1):.2f} | {ranks[0][0]:.2f} / {median(t for t, *_ in ranks):.2f} | "
              f"{best:.2f}×, {mid:.2f}× | {100 * share:.1f} % ({per_step * 1e6:.0f} µs; "
              f"{work * 1e6:.0f} µs) | "
              f"{'yes' if r['ranks_info']['fused'] else 'no'} |")
    if args.unsharded:
        print(f"\n{args.threads} ranks with FASTNN_MPI_SHARDED=0 (every rank updates every "
              "weight), same runs (min / median s; ratio to 1 process as above):\n")
        for kind, r in rows:
            old = sorted(t for t, *_ in r["ranks0"])
            one = sorted(t for t, *_ in r["one"])
            print(f"- {kind}: {old[0]:.2f} / {median(old):.2f} s, {one[0] / old[0]:.2f}×, "
                  f"{median(one) / median(old):.2f}×")
    print(f"\nLoad average (other jobs on the machine): {load[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end.")
    print(f"\n({rows[0][1]['one_info']['samples']:,} samples an epoch: samples/s = samples / s)")
    print(f"\nMeasured allreduce: latency {net['latency'] * 1e6:.1f} µs, bus bandwidth "
          f"{net['bandwidth'] / 1e9:.2f} GB/s ({args.threads} ranks, shared memory).\n")
    print("Modelled ring allreduce per step (measured latency and bandwidth; across machines "
          "the network's replace them):\n")
    print("| workload | gradient | " + " | ".join(f"{n} ranks" for n in (4, 8, 16, 32, 64)) +
          " |")
    print("|---|---:|" + "---:|" * 5)
    for kind, r in rows:
        nbytes = 4 * r["ranks_info"]["params"]
        cells = [f"{ring_allreduce(nbytes, n, net['latency'], net['bandwidth']) * 1e3:.3f} ms"
                 for n in (4, 8, 16, 32, 64)]
        print(f"| {kind} | {nbytes / 2**20:.2f} MiB | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
