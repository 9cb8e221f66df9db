"""Compare two systems (or one system in two checkouts) with their children run alternately.

    PYTHONPATH=. python benchmarks/paired.py A B [--pairs N] [--rounds R] [--workloads ...]

    # fastnn against PyTorch on the LSTM, 10 pairs of children of 3 rounds each
    PYTHONPATH=. python benchmarks/paired.py lstm-fastnn lstm-torch --workloads lstm --pairs 10
    # this checkout's fastnn against another's (a baseline worktree, built)
    PYTHONPATH=. python benchmarks/paired.py lstm-fastnn lstm-fastnn@../base --workloads lstm

report.py runs each system's rounds back to back in one child, so a slow spell of the shared
host lands on one side only. Here each pair runs one child of A and one of B (report.py's
run_system; the order alternates from pair to pair), and the report gives, per benchmark, each
side's min and median over all its rounds and the median and interquartile range of the
per-pair ratios B/A (each child's median round): how many times faster A is, with a spread
that shows whether the difference outlives the host's noise. `SYSTEM@DIR` runs SYSTEM from the
checkout at DIR (its benchmarks/ and its fastnn)."""
import argparse
import os
import statistics
import sys
import tempfile

import report

PEERS = ("fastnn", "torch", "keras")


def key(bench):
    """A benchmark's name without its system: the same workload of two peers pairs up."""
    name, _, ids = bench["name"].partition("[")
    rest = "-".join(p for p in ids.rstrip("]").split("-") if p not in PEERS)
    return f"{name}[{rest}]" if rest else name


def quartiles(values):
    """(lower quartile, median, upper quartile); all three the value itself for one value."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def run_side(spec, rounds, tmp, workloads, samples):
    """One child of `spec` (SYSTEM or SYSTEM@DIR): {benchmark key: its rounds' times}."""
    system, _, root = spec.partition("@")
    run = report.run_system(system, rounds, tmp, workloads, samples, root=root or None)
    if run["rc"] not in (0, 5) or not run["benchmarks"]:
        sys.exit(f"paired: {spec} failed (rc {run['rc']}): " + "; ".join(run["notes"]))
    return {key(b): b["stats"]["data"] for b in run["benchmarks"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="SYSTEM or SYSTEM@DIR (the one whose speed-up is reported)")
    ap.add_argument("b", help="SYSTEM or SYSTEM@DIR (the reference)")
    ap.add_argument("--pairs", type=int, default=10, help="children per side (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per child (default 3)")
    ap.add_argument("--workloads", help="as report.py's --workloads")
    ap.add_argument("--samples", type=int, help="smoke test: as report.py's --samples")
    args = ap.parse_args(argv)
    for spec in (args.a, args.b):
        system, _, root = spec.partition("@")
        if system not in report.SYSTEMS:
            ap.error(f"unknown system {system!r}; known: {','.join(report.SYSTEMS)}")
        if root and not os.path.isdir(os.path.join(root, "benchmarks")):
            ap.error(f"{spec}: {root} has no benchmarks/ folder")
    workloads = args.workloads.split(",") if args.workloads else None
    times = {args.a: {}, args.b: {}}        # side -> key -> [per-child list of rounds]
    with tempfile.TemporaryDirectory(prefix="fastnn-paired-") as tmp:
        for i in range(args.pairs):
            order = (args.a, args.b) if i % 2 == 0 else (args.b, args.a)
            for spec in order:
                print(f"[paired] pair {i + 1}/{args.pairs}: {spec}", file=sys.stderr, flush=True)
                for k, data in run_side(spec, args.rounds, tmp, workloads, args.samples).items():
                    times[spec].setdefault(k, []).append(data)
            for k in times[args.a]:     # this pair's ratios as they come (a run may be cut)
                if k in times[args.b]:
                    a, b = (statistics.median(times[s][k][-1]) for s in (args.a, args.b))
                    print(f"[paired] pair {i + 1} {k}: {args.a} {a:.3f} s, {args.b} {b:.3f} s, "
                          f"ratio {b / a:.2f}", file=sys.stderr, flush=True)
    keys = [k for k in times[args.a] if k in times[args.b]]
    if not keys:
        sys.exit(f"paired: {args.a} and {args.b} share no benchmark")
    print(f"## {args.a} against {args.b}: {args.pairs} pairs of children, alternating, "
          f"{args.rounds} timed rounds each\n")
    print(f"| benchmark | {args.a} min / median s | {args.b} min / median s | "
          f"{args.b} / {args.a} per pair: median [IQR] |\n|---|---:|---:|---:|")
    for k in keys:
        a, b = times[args.a][k], times[args.b][k]
        ratios = [statistics.median(y) / statistics.median(x) for x, y in zip(a, b)]
        q1, q2, q3 = quartiles(ratios)
        flat_a, flat_b = [t for c in a for t in c], [t for c in b for t in c]
        print(f"| {k} | {min(flat_a):.3f} / {statistics.median(flat_a):.3f} | "
              f"{min(flat_b):.3f} / {statistics.median(flat_b):.3f} | "
              f"**{q2:.2f}** [{q1:.2f}, {q3:.2f}] |")
    print(f"\nA ratio over 1: {args.a} is that many times faster. Each pair's ratio divides the "
          "two children's median rounds; the pairs alternate which side runs first.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
