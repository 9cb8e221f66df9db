"""Run the benchmark suite, one subprocess per system, and print a markdown report.

    PYTHONPATH=. python benchmarks/report.py [--rounds N] [--json out.json] [--systems ...]
                                             [--workloads deep_mlp,resnet_mlp,custom_dense,resnet50]

Each system (sgemm, fastnn, torch, keras, resnet-fastnn, ...) runs as its own
`pytest --benchmark-json` child, so no framework's thread pools or allocator share a process with
another's, and each child's peak RSS comes from os.wait4 (for a resnet-* system: the peak of its
ResNet-50 predict at batch 16, model and framework included). A system that is not installed
shows as "skipped"; one that fails shows as "error", with pytest's one-line reason printed under
the table."""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import workloads as wl  # noqa: E402

# system -> (test file, -k expression)
SYSTEMS = {
    "sgemm": (("test_bench_sgemm.py",), "test_sgemm"),
    "fastnn": (("test_bench_train.py", "test_bench_inference.py"), "fastnn and not import"),
    "torch": (("test_bench_train.py", "test_bench_inference.py"), "torch and not import"),
    "keras": (("test_bench_train.py", "test_bench_inference.py"), "keras and not import"),
    "imports": (("test_bench_inference.py",), "test_import"),
    "gpu": (("test_bench_gpu.py",), "test_train_gpu"),
    "resnet-fastnn": (("test_bench_resnet.py",), "fastnn"),
    "resnet-torch": (("test_bench_resnet.py",), "torch"),
    "resnet-keras": (("test_bench_resnet.py",), "keras"),
    "text-fastnn": (("test_bench_text.py",), "fastnn"),
    "text-torch": (("test_bench_text.py",), "torch"),
    "text-keras": (("test_bench_text.py",), "keras"),
    "lstm-fastnn": (("test_bench_lstm.py",), "fastnn"),
    "lstm-torch": (("test_bench_lstm.py",), "torch"),
    "lstm-keras": (("test_bench_lstm.py",), "keras"),
}
LABEL = {"fastnn": "fastnn", "torch": "PyTorch", "keras": "Keras"}


# the systems that a --workloads selection narrows (their tests' ids name the workload)
TRAINING = ("fastnn", "torch", "keras")
# ResNet-50 predict (issue 16), one child per peer; the `resnet50` workload selects them
RESNET = {"resnet-fastnn": "fastnn", "resnet-torch": "torch", "resnet-keras": "keras"}
# the Conv1D text model (issue 18), one child per peer; the `text` workload selects them
TEXT = {"text-fastnn": "fastnn", "text-torch": "torch", "text-keras": "keras"}
# LSTM(128) training (issue 18), one child per peer; the `lstm` workload selects them
LSTM = {"lstm-fastnn": "fastnn", "lstm-torch": "torch", "lstm-keras": "keras"}


def selected(system, workloads):
    """Whether a --workloads selection (None: all) leaves this system anything to run."""
    if workloads is None or system not in TRAINING and system not in RESNET and \
            system not in TEXT and system not in LSTM:
        return True
    if system in RESNET:
        return "resnet50" in workloads
    if system in TEXT:
        return "text" in workloads
    if system in LSTM:
        return "lstm" in workloads
    return any(w not in ("resnet50", "text", "lstm") for w in workloads)


def run_system(name, rounds, tmp, workloads=None, samples=None, root=None):
    """Run one system's benchmarks; returns dict(rc, benchmarks, notes, rss_mib, wall_s).
    `workloads`: only the tests whose ids name one of these (training systems only);
    `samples`: the smoke-test cap on each round's samples (--bench-samples); `root`: another
    checkout to run (its benchmarks/ and its fastnn; paired.py's SYSTEM@DIR), else this one.
    Each benchmark's stats keep every round's time ("data")."""
    paths, expr = SYSTEMS[name]
    here, env = HERE, dict(os.environ, COLUMNS="400")
    if root:
        root = os.path.abspath(root)
        here, env["PYTHONPATH"] = os.path.join(root, "benchmarks"), root
    if workloads and name in TRAINING:
        expr = f"({expr}) and " \
            f"({' or '.join(w for w in workloads if w not in ('resnet50', 'text', 'lstm'))})"
    out_json, log = os.path.join(tmp, f"{name}.json"), os.path.join(tmp, f"{name}.log")
    if os.path.exists(out_json):
        os.remove(out_json)     # (a paired run's earlier child)
    cmd = [sys.executable, "-m", "pytest", *(os.path.join(here, p) for p in paths), "-k", expr,
           "-q", "-rfEs", "-p", "no:cacheprovider", "--benchmark-only",
           f"--benchmark-json={out_json}", "--benchmark-save-data",
           f"--bench-rounds={rounds}"] + ([f"--bench-samples={samples}"] if samples else [])
    print(f"[report] {name}: running ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        # wide COLUMNS: pytest cuts the one-line failure reasons to the terminal width
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=root)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = open(log, errors="replace").read()
    notes = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR", "SKIPPED"))]
    if proc.returncode not in (0, 5) and not notes:
        notes = text.strip().splitlines()[-5:]
    benches = json.load(open(out_json))["benchmarks"] if os.path.exists(out_json) else []
    print(f"[report] {name}: rc={proc.returncode}, {len(benches)} results, {wall:.0f} s",
          file=sys.stderr, flush=True)
    return dict(rc=proc.returncode, benchmarks=benches, notes=notes, wall_s=round(wall, 1),
                rss_mib=round(usage.ru_maxrss / 1024, 1))


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def ratio(a, b):
    return None if a is None or b is None else a / b


def build_report(runs, rounds, workloads=None, samples=None):
    """The markdown and the JSON data. `workloads`: the selection (None: all), whose rows only
    are shown; `samples`: the smoke-test cap, flagged in the header."""
    # medians and metadata per (workload, system)
    med, info = {}, {}
    for system, run in runs.items():
        for b in run["benchmarks"]:
            e = b["extra_info"]
            if system in TEXT:
                continue        # its own table (_text_table)
            if e.get("workload"):
                med[e["workload"], system] = b["stats"]["median"]
            if e.get("workload") or e.get("graph_workload"):
                info[system] = e
            elif e.get("resnet_batch"):   # versions and threads when only ResNet-50 ran
                info.setdefault(RESNET[system], e)
            elif e.get("lstm"):
                info.setdefault(LSTM[system], e)
    gemm = {tuple(b["extra_info"]["shape"]): b for b in runs.get("sgemm", {}).get("benchmarks", [])}
    gflops = {s: b["extra_info"]["flop"] / b["stats"]["median"] / 1e9 for s, b in gemm.items()}
    peak = max(gflops.values(), default=None)

    def cell(workload, system, scale):
        if (workload, system) in med:
            return med[workload, system] * scale
        run = runs.get(system)
        return None if run is None else "error" if run["rc"] not in (0, 5) else "skipped"

    train = any(s in runs for s in TRAINING)
    lines = [f"## fastnn benchmark: training on MNIST, batch {wl.BATCH}, median of {rounds} rounds"
             if train else f"## fastnn benchmark, median of {rounds} rounds"]
    if samples:
        lines += ["", f"**Smoke run:** each round trained on at most {samples} samples, so the "
                  "times below are not the workloads' rounds (the *timed* column) and mean "
                  "nothing as speeds."]
    seed = [w for w in wl.WORKLOADS if train and (workloads is None or w in workloads)]
    if seed:
        lines += ["", "| workload | timed | fastnn s | PyTorch s | Keras s | PyTorch/fastnn "
                  "| Keras/fastnn | FLOP floor s | fastnn ÷ floor |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    results = {}
    num = lambda v: v if isinstance(v, float) else None  # noqa: E731
    for w in seed:
        # one row for the timed round; a workload timed on fewer steps also gets a 60k-epoch row
        scales = [(w, wl.timed(w), 1.0)]
        if wl.epoch_scale(w) != 1:
            scales.append((f"{w}_60k_epoch", f"×{wl.epoch_scale(w):g} = 60k epoch",
                           wl.epoch_scale(w)))
        for key, timed, scale in scales:
            f, t, k = (cell(w, s, scale) for s in ("fastnn", "torch", "keras"))
            flops = wl.train_gemm_flops(w, wl.WORKLOADS[w]["samples"] * scale)
            floor = flops / 1e9 / peak if peak else None
            row = dict(fastnn=f, torch=t, keras=k, torch_over_fastnn=ratio(num(t), num(f)),
                       keras_over_fastnn=ratio(num(k), num(f)), floor_s=floor,
                       fastnn_over_floor=ratio(num(f), floor))
            results[key] = dict(workload=w, timed=timed, **row)
            lines.append(f"| {w} ({wl.describe(w)}) | {timed} | " + " | ".join(
                fmt(row[c], ".2f" if "over" in c else ".3f") for c in row) + " |")
    if seed:
        lines += ["", "FLOP floor = training GEMM FLOPs (forward 2·B·in·out per layer, backward "
                  "twice that, less the first layer's input gradient; conv as im2col GEMMs) / peak "
                  "measured sgemm GFLOP/s below."]
    graph_lines, graphs = _graph_table(runs, workloads)
    lines += graph_lines

    if gflops:
        lines += ["", "### sgemm (fastnn._core.gemm, median)", "",
                  "| M x K x N | GFLOP/s | used by |", "|---|---:|---|"]
        lines += [f"| {gemm[s]['extra_info']['label']} | {g:.1f} | {', '.join(wl.shape_users(s))} |"
                  for s, g in gflops.items()]
        lines += ["", f"Peak measured: **{peak:.1f} GFLOP/s**."]
        if seed:
            lines += ["", "| workload | GEMM GFLOP / 60k epoch | GEMM-only s / 60k epoch at the "
                      "per-shape rates above | fastnn ÷ GEMM-only |", "|---|---:|---:|---:|"]
        for w in seed:
            steps = wl.N_TRAIN / wl.BATCH
            t = sum(gemm[s]["stats"]["median"] for s in wl.train_gemms(w) if s in gemm) * steps
            key = w if wl.epoch_scale(w) == 1 else f"{w}_60k_epoch"
            over = ratio(num(results[key]["fastnn"]), t)
            results[key]["gemm_only_s"], results[key]["fastnn_over_gemm_only"] = t, over
            lines.append(f"| {w} | {wl.train_gemm_flops(w) / 1e9:.2f} | {t:.3f} | "
                         f"{fmt(over, '.2f')} |")

    lines += _inference_tables(runs)
    resnet_lines, resnet = _resnet_table(runs, peak)
    lines += resnet_lines
    text_lines, text = _text_table(runs)
    lines += text_lines
    lstm_lines, lstm = _lstm_table(runs, peak)
    lines += lstm_lines
    lines += _gpu_table(runs)

    kinfo = info.get("keras", {})
    keras_backend = (f"{kinfo['backend']} {kinfo['backend_version']}" if kinfo
                     else os.environ.get("KERAS_BACKEND", "tensorflow" if version("tensorflow")
                                         or version("tensorflow-cpu") else "torch") + " (not run)")
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(), "numpy": version("numpy"),
        "fastnn": info.get("fastnn", {}).get("version") or _fastnn_version(),
        "fastnn_threads": info.get("fastnn", {}).get("threads"),
        "blas": next(iter(gemm.values()))["extra_info"].get("blas") if gemm else None,
        "torch": version("torch"), "torch_threads": info.get("torch", {}).get("threads"),
        "keras": version("keras"), "keras_backend": keras_backend,
        "pytest_benchmark": version("pytest-benchmark"),
    }
    lines += ["", "### Peak RSS per system (whole pytest child; the training systems' include "
              "the 60k MNIST arrays)", "",
              "| system | peak RSS MiB | child wall s | status |", "|---|---:|---:|---|"]
    def status(r):
        return "ok" if r["rc"] == 0 and r["benchmarks"] else \
            "skipped" if r["rc"] in (0, 5) else "error"
    lines += [f"| {s} | {r['rss_mib']:.0f} | {r['wall_s']:.0f} | {status(r)} |"
              for s, r in runs.items()]
    lines += ["", "### Environment", ""] + [f"- {k}: {fmt(v)}" for k, v in env.items()]
    notes = [f"- {s}: {n}" for s, r in runs.items() for n in r["notes"]]
    if notes:
        lines += ["", "### Skips and failures", ""] + notes
    data = dict(env=env, rounds=rounds, samples_cap=samples, train=results, graphs=graphs,
                resnet50=resnet, text_conv1d=text, lstm=lstm,
                sgemm_gflops={
        gemm[s]["extra_info"]["label"]: g for s, g in gflops.items()}, peak_gflops=peak,
        systems={s: {k: r[k] for k in ("rc", "rss_mib", "wall_s", "notes")}
                 for s, r in runs.items()},
        benchmarks=[dict(name=b["name"], group=b["group"], extra_info=b["extra_info"],
                         stats={k: b["stats"][k]
                                for k in ("min", "median", "mean", "stddev", "rounds")})
                    for r in runs.values() for b in r["benchmarks"]])
    return "\n".join(lines), data


GRAPH_VARIANT_LABEL = {"functional": "functional", "sequential": "Sequential (fastnn only)",
                       "custom": "Layer subclass (ops)", "builtin": "built-in Dense"}


def _graph_table(runs, workloads=None):
    """The graph workloads (issue 15): per way of writing the network, the median per system,
    PyTorch/fastnn and Keras/fastnn, and fastnn's functional/Sequential and custom/built-in."""
    med = {}
    for system, run in runs.items():
        for b in run["benchmarks"]:
            e = b["extra_info"]
            if e.get("graph_workload"):
                med[e["graph_workload"], e["variant"], system] = b["stats"]["median"]
    names = [w for w in wl.GRAPH_WORKLOADS if workloads is None or w in workloads]
    if not names or not any(s in runs for s in TRAINING):
        return [], {}

    def cell(w, variant, system):
        if (w, variant, system) in med:
            return med[w, variant, system]
        run = runs.get(system)
        if run is None or system not in wl.GRAPH_WORKLOADS[w]["variants"][variant]:
            return None
        return "error" if run["rc"] not in (0, 5) else "skipped"

    num = lambda v: v if isinstance(v, float) else None  # noqa: E731
    lines = ["", "### Graphs and custom layers (issue 15), median s per round", "",
             "| workload | written as | timed | fastnn s | PyTorch s | Keras s | PyTorch/fastnn "
             "| Keras/fastnn | functional/Sequential | custom/built-in |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows, peers = {}, []
    for w in names:
        for variant in wl.GRAPH_WORKLOADS[w]["variants"]:
            f, t, k = (cell(w, variant, s) for s in TRAINING)
            other = {"functional": "sequential", "custom": "builtin"}.get(variant)
            base = num(cell(w, other, "fastnn")) if other in wl.GRAPH_WORKLOADS[w]["variants"] \
                else None
            row = dict(fastnn=f, torch=t, keras=k, torch_over_fastnn=ratio(num(t), num(f)),
                       keras_over_fastnn=ratio(num(k), num(f)),
                       functional_over_sequential=ratio(num(f), base) if other == "sequential"
                       else None,
                       custom_over_builtin=ratio(num(f), base) if other == "builtin" else None)
            rows[f"{w}/{variant}"] = dict(workload=w, variant=variant, timed=wl.timed(w),
                                          epoch_scale=wl.epoch_scale(w), **row)
            lines.append(f"| {w} ({wl.describe(w)}) | {GRAPH_VARIANT_LABEL[variant]} | "
                         f"{wl.timed(w)} | " + " | ".join(
                             fmt(row[c], ".2f" if "over" in c else ".3f") for c in row) + " |")
            if other == "builtin":   # the same ratio for the peers, for scale
                for system in ("torch", "keras"):
                    r = ratio(num(cell(w, variant, system)), num(cell(w, other, system)))
                    if r is not None:
                        peers.append(f"{LABEL[system]} {r:.2f}")
                        rows[f"{w}/{variant}"][f"{system}_custom_over_builtin"] = r
    scales = sorted({wl.epoch_scale(w) for w in names})
    lines += ["", "PyTorch/fastnn, Keras/fastnn: how many times faster fastnn is. "
              "functional/Sequential: fastnn's functional chain over the same chain as a "
              "Sequential (issue 15: ~1, the same fused path). custom/built-in: fastnn with the "
              "hidden layers as a Layer subclass written in ops (autodiff tape) over the built-in "
              "Dense (issue 15: at most 3)" + (f"; the same ratio for {', '.join(peers)}" if peers
                                               else "") +
              ". Issue 15 asks ≥ 3× PyTorch for deep_mlp and resnet_mlp. "
              f"A 60k-sample epoch is ×{'/'.join(f'{x:g}' for x in scales)} these times "
              "(the JSON has the ratios; they do not change)."]
    return lines, rows


def _gpu_table(runs):
    """fastnn CUDA against PyTorch CUDA, or why there is no such table."""
    run = runs.get("gpu")
    if run is None:
        return []
    med, gpu = {}, None
    for b in run["benchmarks"]:
        e = b["extra_info"]
        med[e["gpu_workload"], e["system"]] = b["stats"]["median"]
        gpu = e.get("gpu", gpu)
    if not med:
        reason = next((n for n in run["notes"] if "SKIPPED" in n), "no results")
        return ["", f"### GPU: not run ({reason})"]
    lines = ["", f"### GPU training ({gpu}), median s per round", "",
             "| workload | timed | fastnn CUDA s | PyTorch CUDA s | PyTorch/fastnn |",
             "|---|---|---:|---:|---:|"]
    for w in ("mlp_adam", "cnn"):
        f, t = med.get((w, "fastnn_cuda")), med.get((w, "torch_cuda"))
        lines.append(f"| {w} ({wl.describe(w)}) | {wl.timed(w)} | {fmt(f)} | {fmt(t)} | "
                     f"{fmt(ratio(t, f), '.2f')} |")
    return lines


def _inference_tables(runs):
    """predict throughput / latency per system, and whole-process import times."""
    pred, imports = {}, {}
    for system, run in runs.items():
        for b in run["benchmarks"]:
            e = b["extra_info"]
            if e.get("predict"):
                pred[e["predict"], system] = (b["stats"]["median"], e["samples"])
            if e.get("import_"):
                imports[e["import_"]] = b["stats"]["median"]
    lines = []
    if pred:
        lines += ["", "### predict (784-128-64-10 MLP)", "",
                  "| case | fastnn | PyTorch | Keras | fastnn/PyTorch | fastnn/Keras |",
                  "|---|---:|---:|---:|---:|---:|"]
        for case in ("batch32", "batch1024", "one_predict", "one_call"):
            vals = [pred.get((case, s)) for s in ("fastnn", "torch", "keras")]
            if case.startswith("one"):     # latency: lower is better, shown in microseconds
                cells = [fmt(v[0] * 1e6, ".0f") + " µs" if v else "–" for v in vals]
                speed = [ratio(v[0], vals[0][0]) if v and vals[0] else None for v in vals[1:]]
            else:                          # throughput: samples per second
                cells = [f"{v[1] / v[0]:,.0f}/s" if v else "–" for v in vals]
                speed = [ratio(v[0], vals[0][0]) if v and vals[0] else None for v in vals[1:]]
            lines.append(f"| {case} | " + " | ".join(cells) + " | " +
                         " | ".join(fmt(r, ".2f") + "×" if r else "–" for r in speed) + " |")
        lines += ["", "fastnn/peer = how many times faster fastnn is (same run)."]
    if imports:
        lines += ["", "### import, whole process (median of 5)", "", "| import | s | ÷ numpy |",
                  "|---|---:|---:|"]
        base = imports.get("numpy")
        lines += [f"| {k} | {v:.3f} | {fmt(ratio(v, base), '.2f')} |" for k, v in imports.items()]
    return lines


def _lstm_table(runs, peak):
    """LSTM(128) training (issue 18): epoch seconds per system, fastnn's speed-ups and, with
    the sgemm peak of the same run, each system's time over its GEMM FLOP floor."""
    med, samples, threads = {}, None, {}
    for system, peer in LSTM.items():
        for b in runs.get(system, {}).get("benchmarks", []):
            med[peer] = b["stats"]["median"]
            samples = b["extra_info"]["samples"]
            threads[peer] = b["extra_info"].get("threads")
    if not any(s in runs for s in LSTM):
        return [], {}

    def cell(peer):
        if peer in med:
            return f"{med[peer]:.2f}"
        run = runs.get(f"lstm-{peer}")
        return "–" if run is None else "error" if run["rc"] not in (0, 5) else "skipped"
    spec = wl.LSTM_SPEC
    data = {f"{p}_epoch_s": med.get(p) for p in LSTM.values()}
    data.update(fastnn_over_torch=ratio(med.get("torch"), med.get("fastnn")),
                fastnn_over_keras=ratio(med.get("keras"), med.get("fastnn")), samples=samples,
                threads=threads)
    floor = wl.lstm_gemm_flops(samples) / 1e9 / peak if peak and samples else None
    data.update(floor_s=floor, fastnn_over_floor=ratio(med.get("fastnn"), floor),
                torch_over_floor=ratio(med.get("torch"), floor))
    lines = ["", f"### LSTM({spec['units']}) training: epoch of {samples} sequences "
             f"({spec['steps']} word ids, Embedding {spec['vocab']:,} × {spec['features']}), "
             f"batch {wl.BATCH}", "",
             "| fastnn s | PyTorch s | Keras s | fastnn/PyTorch | fastnn/Keras | FLOP floor s "
             "| fastnn ÷ floor | PyTorch ÷ floor |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|",
             "| " + " | ".join(cell(p) for p in LSTM.values()) + " | " +
             " | ".join(f"{data[k]:.2f}×" if data[k] else "–"
                        for k in ("fastnn_over_torch", "fastnn_over_keras")) + " | " +
             fmt(floor, ".3f") + " | " + " | ".join(
                 fmt(data[k], ".2f") for k in ("fastnn_over_floor", "torch_over_floor")) + " |",
             "", "Embedding → LSTM(128) → Dense(1, sigmoid), Adam lr 1e-3, binary crossentropy; "
             "fastnn and Keras run the same script (`fit(epochs=1)`), PyTorch `nn.Embedding` + "
             "`nn.LSTM` + `Linear` in "
             "its usual loop. fastnn/peer = how many times faster fastnn is (threads: "
             + ", ".join(f"{p} {t}" for p, t in threads.items()) + "). FLOP floor = the "
             "epoch's GEMM FLOPs (6·T·4U·(D+U) a sequence) / the peak sgemm rate of this run "
             "(run with the `sgemm` system; – without): no system can train an epoch faster "
             "while doing these multiplications, before the Adam pass over the embedding "
             "table, the gate nonlinearities and the copies."]
    return lines, data


def _resnet_table(runs, peak):
    """ResNet-50 predict (issue 16): img/s per system and batch size, fastnn's speed-ups, each
    system's GFLOP/s and share of the peak sgemm rate, and each child's peak RSS."""
    med, images, flop = {}, {}, wl.resnet50_flops()
    for system, peer in RESNET.items():
        for b in runs.get(system, {}).get("benchmarks", []):
            e = b["extra_info"]
            med[e["resnet_batch"], peer] = b["stats"]["median"]
            images[e["resnet_batch"], peer] = e["images"]
    if not any(s in runs for s in RESNET):
        return [], {}

    def status(peer):
        run = runs.get(f"resnet-{peer}")
        return "–" if run is None else "error" if run["rc"] not in (0, 5) else "skipped"

    peers = tuple(RESNET.values())
    rss = {p: runs[f"resnet-{p}"]["rss_mib"] if med.get((16, p)) else None for p in peers}
    lines = ["", f"### ResNet-50 predict (224×224), {flop / 1e9:.2f} GFLOP per image", "",
             "| batch | fastnn img/s | PyTorch img/s | Keras img/s | fastnn/PyTorch | fastnn/Keras "
             "| fastnn GFLOP/s (% peak) | PyTorch GFLOP/s (% peak) | Keras GFLOP/s (% peak) "
             "| peak RSS MiB at batch 16: fastnn / PyTorch / Keras |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    data = dict(flop_per_image=flop, sgemm_peak_gflops=peak,
                peak_rss_mib_batch16={p: rss[p] for p in peers})
    for batch in (1, 16):
        ips = {p: images[batch, p] / med[batch, p] if (batch, p) in med else None for p in peers}
        gf = {p: ips[p] * flop / 1e9 if ips[p] else None for p in peers}
        row = {f"{p}_img_s": ips[p] for p in peers}
        row.update(fastnn_over_torch=ratio(ips["fastnn"], ips["torch"]),
                   fastnn_over_keras=ratio(ips["fastnn"], ips["keras"]))
        row.update({f"{p}_gflops": gf[p] for p in peers})
        row.update({f"{p}_share_of_sgemm_peak": ratio(gf[p], peak) for p in peers})
        data[f"batch{batch}"] = row
        cells = [f"{ips[p]:.2f}" if ips[p] else status(p) for p in peers]
        cells += [f"{row[k]:.2f}×" if row[k] else "–"
                  for k in ("fastnn_over_torch", "fastnn_over_keras")]
        cells += [(f"{gf[p]:.0f}" + (f" ({gf[p] / peak:.0%})" if peak else "")) if gf[p] else "–"
                  for p in peers]
        cells.append(" / ".join(fmt(rss[p], ".0f") for p in peers) if batch == 16 else "")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines += ["", "A round is 16 images: one predict call of 16 at batch 16, 16 calls of one image "
              "at batch 1 (fastnn and Keras `model.predict(x, batch_size=b, verbose=0)`, PyTorch "
              "the module under `torch.no_grad()`, NCHW prepared untimed); img/s = 16 / median "
              "round. fastnn/peer = how many times faster fastnn is. GFLOP/s counts the convs' "
              "and the Dense's multiply-adds ×2 (the direct convolution's count: fastnn runs "
              "its 3x3 convolutions by Winograd's F(2x2, 3x3), with 2.25x fewer, so its figure "
              "is an effective rate); % peak is of the peak sgemm rate above "
              + ("(sgemm not run: –)" if not peak else f"({peak:.1f} GFLOP/s)") + ". Peak RSS: "
              "the whole child (interpreter, framework, model, batch 1 and 16), from os.wait4."]
    return lines, data


def _text_table(runs):
    """The Conv1D text model (issue 18): seconds per IMDB-sized epoch per system (the timed
    300 steps scaled to 25,000 sequences) and fastnn's speed-ups, from one run of the three."""
    med, samples, epoch = {}, {}, None
    for system, peer in TEXT.items():
        for b in runs.get(system, {}).get("benchmarks", []):
            e = b["extra_info"]
            med[peer], samples[peer], epoch = b["stats"]["median"], e["samples"], \
                e["epoch_samples"]
    if not any(s in runs for s in TEXT):
        return [], {}
    peers = tuple(TEXT.values())
    secs = {p: med[p] * epoch / samples[p] if p in med else None for p in peers}

    def status(peer):
        run = runs.get(f"text-{peer}")
        return "–" if run is None else "error" if run["rc"] not in (0, 5) else "skipped"
    data = {f"{p}_epoch_s": secs[p] for p in peers}
    data.update(fastnn_over_torch=ratio(secs["torch"], secs["fastnn"]),
                fastnn_over_keras=ratio(secs["keras"], secs["fastnn"]))
    cells = [fmt(secs[p], ".1f") if secs[p] else status(p) for p in peers]
    cells += [f"{data[k]:.2f}×" if data[k] else "–"
              for k in ("fastnn_over_torch", "fastnn_over_keras")]
    lines = ["", "### Conv1D text model: Embedding(20000, 128) on 200 ids, Conv1D(128, 5, relu), "
             "GlobalMaxPooling1D, Dense(1, sigmoid); Adam, batch 32", "",
             "| fastnn s/epoch | PyTorch s/epoch | Keras s/epoch | fastnn/PyTorch | fastnn/Keras |",
             "|---:|---:|---:|---:|---:|", "| " + " | ".join(cells) + " |", "",
             "An epoch is 25,000 sequences (IMDB's training set): the median round of 9,600 "
             "synthetic sequences (300 steps, `test_bench_text.py`) scaled by 25000/9600. "
             "fastnn/peer = how many times faster fastnn is."]
    return lines, data


def _fastnn_version():
    try:
        import fastnn
        return fastnn.__version__
    except Exception as e:  # noqa: BLE001 -- report, don't crash
        return f"not importable ({e})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per training benchmark")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)}")
    known = list(wl.WORKLOADS) + list(wl.GRAPH_WORKLOADS) + ["predict", "resnet50", "text",
                                                              "lstm"]
    ap.add_argument("--workloads", help="comma-separated subset of " + ",".join(known) +
                    " (narrows the training systems; resnet50 selects the resnet-* systems; "
                    "default: all)")
    ap.add_argument("--samples", type=int,
                    help="smoke test: at most this many samples per round (times not comparable)")
    args = ap.parse_args(argv)
    workloads = args.workloads.split(",") if args.workloads else None
    bad = [w for w in workloads or () if w not in known]
    if bad:
        ap.error(f"unknown workload(s) {bad}; known: {known}")
    with tempfile.TemporaryDirectory(prefix="fastnn-bench-") as tmp:
        runs = {s: run_system(s, args.rounds, tmp, workloads, args.samples)
                for s in args.systems.split(",") if selected(s, workloads)}
    text, data = build_report(runs, args.rounds, workloads, args.samples)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
