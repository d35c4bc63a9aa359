#!/usr/bin/env python3
"""Per-stage cost of a fresh pipeline run on one dataset: seconds, images/s, peak RSS, GPU memory, share.

    python bench/stages.py DATASET [--workspace DIR] [--out JSON] [--stages features,points] [--no-forward]
    dvc plots show bench/results/stages_DATASET.json -x stage -y seconds

Runs every stage of ``dvc.yaml`` in its order for ``DATASET``, each as its own
child process in the workspace: the stage's ``cmd`` from ``dvc.yaml`` with
``${item}`` replaced by the dataset (``python stages/<stage>.py --dataset
DATASET``, and evaluate's and table's own arguments), run by this Python,
with the workspace's code first on ``PYTHONPATH`` and its ``params.yaml`` as
it is (edit that file, or use a scratch checkout, to bench other settings).
DVC is not involved: every stage runs even where ``dvc repro`` would skip
it, so the timings are those of a fresh run. The dataset's outputs in the
workspace are rewritten (with what ``dvc repro`` would write; a stale
``features.h5.partial`` is deleted first, so the features stage cannot resume
from it). The workspace is the checkout holding this script unless
``--workspace`` names another checkout; nothing is copied.

Per stage: wall seconds; images per second, counting the entries of
``data/<ds>/gnd.json`` (database images + queries); the peak resident memory
of the stage's process (``os.wait4``: the largest of the process and the
children it waited for, not their sum); with an NVIDIA driver present, the
peak GPU memory torch allocated in it (the stage then runs through a small
wrapper that reports ``torch.cuda.max_memory_allocated`` at exit); its share
of the summed stage time. After the stages, the features row gets a
companion, ``features: bare forward``: the backbone alone
(``Backbone.feature_maps``: preprocessing, forward, map to host) on the same
network inputs, in the same precision and batches of same-size inputs as
the features stage (``features.h5``'s ``precision`` / ``batch_size``
attributes, else ``features.precision`` / ``runtime.batch_size``), in a
process set up as the stages are (``rdfa.io.stage.keep_freed_memory``: 47 ->
33 ms per image here without and with it), decoding and resizing done
beforehand, untimed; the ratio bare forward / features
stage is the share of the network's throughput the stage keeps (the speed
issue's goal: at least 0.8). Its share is of the same total, and lies inside
the features stage's.

Writes a JSON list of records ``{stage, seconds, images, images_per_s,
peak_rss_mb, share}`` (plus ``gpu_peak_mb`` where measured) for ``dvc plots``,
to ``--out`` (default ``bench/results/stages_<DATASET>.json`` beside this
script), the run's context (host, load average, commit, parameters that
matter) beside it as ``.meta.json``, and each stage's log under
``<out>.logs/``. Prints a markdown table. Run it on a quiet machine: the
load average at the start and end is in the table's heading.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORWARD = "features: bare forward"

#: Runs a stage script as ``python script args`` would, and at exit writes the peak GPU memory torch
#: allocated in the process (if it used CUDA) to the file named by RDFA_BENCH_GPU_JSON.
GPU_WRAPPER = """\
import atexit, json, os, runpy, sys

def _report():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        with open(os.environ["RDFA_BENCH_GPU_JSON"], "w") as f:
            json.dump({"peak_allocated": torch.cuda.max_memory_allocated(),
                       "peak_reserved": torch.cuda.max_memory_reserved()}, f)

atexit.register(_report)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
runpy.run_path(script, run_name="__main__")
"""


def stage_commands(workspace: Path, dataset: str) -> list[tuple[str, list[str]]]:
    """``(stage, argv)`` of every stage of the workspace's ``dvc.yaml``, in order, for ``dataset``."""
    import yaml

    stages = (yaml.safe_load((workspace / "dvc.yaml").read_text()) or {}).get("stages") or {}
    out = []
    for name, stage in stages.items():
        if "foreach" in stage and stage["foreach"] != "${datasets}":
            continue  # not a stage of each dataset (the distractor stages: one per distractors entry)
        cmd = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
        if isinstance(cmd, list):
            raise ValueError(f"dvc.yaml: stage {name} has several commands; the bench runs one per stage")
        cmd = cmd.replace("${item}", dataset)
        left = re.findall(r"\$\{[^}]*\}", cmd)
        if left:
            raise ValueError(f"dvc.yaml: stage {name}: cannot substitute {', '.join(left)} in {cmd!r}")
        argv = shlex.split(cmd)
        if argv and re.fullmatch(r"python[0-9.]*", argv[0]):
            argv[0] = sys.executable  # this environment's Python, as `dvc repro` in it would run
        out.append((name, argv))
    return out


def _maxrss_mb(usage) -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def run_child(argv: list[str], cwd: Path, env: dict, log_path: Path, gpu_memory: bool) -> dict:
    """Run one command; its wall seconds, exit status, peak RSS (MB) and, with ``gpu_memory``, peak GPU MB."""
    env = dict(env)
    gpu_file = None
    if gpu_memory and len(argv) > 1 and argv[1].endswith(".py"):
        fd, gpu_file = tempfile.mkstemp(prefix="rdfa-bench-gpu-", suffix=".json")
        os.close(fd)
        os.unlink(gpu_file)  # written only by a process that used CUDA
        env["RDFA_BENCH_GPU_JSON"] = gpu_file
        argv = [argv[0], "-c", GPU_WRAPPER] + argv[1:]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        # wait4 rather than Popen.wait: it returns this child's own resource usage (getrusage's
        # RUSAGE_CHILDREN would be the maximum over every child this process ever had).
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = {"seconds": seconds, "returncode": proc.returncode, "peak_rss_mb": _maxrss_mb(usage)}
    if gpu_file and os.path.exists(gpu_file):
        with open(gpu_file) as f:
            out["gpu_peak_mb"] = json.load(f)["peak_allocated"] / 2**20
        os.unlink(gpu_file)
    return out


def child_env(workspace: Path) -> dict:
    env = dict(os.environ)
    # The workspace's own rdfa, not whichever checkout the environment installed.
    env["PYTHONPATH"] = os.pathsep.join([str(workspace)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_stages(commands, workspace: Path, logs: Path, gpu_memory: bool, echo=print) -> list[dict]:
    """Run ``commands`` in order; one raw measurement per stage. Stops at the first that fails."""
    env = child_env(workspace)
    runs = []
    for name, argv in commands:
        echo(f"bench: {name}: {shlex.join(argv[1:] if argv[0] == sys.executable else argv)}")
        run = run_child(argv, workspace, env, logs / f"{name}.log", gpu_memory)
        runs.append(dict(run, stage=name))
        if run["returncode"] != 0:
            tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            echo(f"bench: {name} failed (exit status {run['returncode']}); the end of its log "
                 f"({logs / (name + '.log')}):\n" + "\n".join(tail))
            break
        echo(f"bench: {name}: {run['seconds']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB")
    return runs


def records(runs: list[dict], n_images: int | None, forward: dict | None = None) -> list[dict]:
    """The JSON records: per stage ``seconds, images, images_per_s, peak_rss_mb, share`` (+ ``gpu_peak_mb``),
    then the bare forward (with ``forward_over_features``), whose share is of the same total."""
    total = sum(r["seconds"] for r in runs) or 1.0
    out = []
    for run in runs + ([dict(forward, stage=FORWARD)] if forward else []):
        rec = {"stage": run["stage"], "seconds": round(run["seconds"], 3), "images": n_images,
               "images_per_s": round(n_images / run["seconds"], 3) if n_images and run["seconds"] > 0 else None,
               "peak_rss_mb": round(run["peak_rss_mb"], 1), "share": round(run["seconds"] / total, 4)}
        if "gpu_peak_mb" in run:
            rec["gpu_peak_mb"] = round(run["gpu_peak_mb"], 1)
        if run.get("returncode", 0) != 0:
            rec["failed"] = True
        out.append(rec)
    if forward:
        features = next((r for r in runs if r["stage"] == "features"), None)
        rec = out[-1]
        rec.update({k: forward[k] for k in ("network_inputs", "precision", "batch_size", "device", "note")
                    if k in forward})
        if features:
            rec["forward_over_features"] = round(forward["seconds"] / features["seconds"], 3)
    return out


def markdown(recs: list[dict], title: str) -> str:
    gpu = any("gpu_peak_mb" in r for r in recs)
    head = "| stage | seconds | images/s | peak RSS MB |" + (" GPU MB |" if gpu else "") + " share |"
    lines = [f"## {title}", "", head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
    stage_total = 0.0
    for r in recs:
        forward = r["stage"] == FORWARD
        stage_total += 0 if forward else r["seconds"]
        name = f"  ({r['stage']})" if forward else r["stage"] + (" FAILED" if r.get("failed") else "")
        cells = [name, f"{r['seconds']:.1f}", "" if r["images_per_s"] is None else f"{r['images_per_s']:.3g}",
                 f"{r['peak_rss_mb']:.0f}"]
        if gpu:
            cells.append(f"{r['gpu_peak_mb']:.0f}" if "gpu_peak_mb" in r else "")
        cells.append(f"({100 * r['share']:.1f} %)" if forward else f"{100 * r['share']:.1f} %")
        lines.append("| " + " | ".join(cells) + " |")
    images = recs[0]["images"] if recs else None
    total_rate = f"{images / stage_total:.3g}" if images and stage_total else ""
    lines.append(f"| **total** | {stage_total:.1f} | {total_rate} | |" + (" |" if gpu else "") + " 100 % |")
    fwd = next((r for r in recs if r["stage"] == FORWARD), None)
    if fwd:
        lines += ["", f"Bare forward: {fwd['seconds']:.1f} s for {fwd.get('network_inputs')} network inputs "
                  f"({fwd.get('precision')}, batches of up to {fwd.get('batch_size')}, {fwd.get('device')})"
                  + (f"; {fwd['note']}" if fwd.get("note") else "") + "."]
        if "forward_over_features" in fwd:
            lines.append(f"features stage throughput = {100 * fwd['forward_over_features']:.0f} % of the bare "
                         "forward's (bare forward seconds / features stage seconds; goal: at least 80 %).")
    return "\n".join(lines) + "\n"


def count_images(workspace: Path, dataset: str) -> int | None:
    """Database images + queries of ``data/<ds>/gnd.json`` (None before the data stage has run)."""
    path = workspace / "data" / dataset / "gnd.json"
    if not path.is_file():
        return None
    gnd = json.loads(path.read_text())
    return len(gnd["imlist"]) + len(gnd["qimlist"])


# --- the bare forward (run in a child process, in the workspace, by --forward-only) ----------------


def same_size_batches(items, batch_size: int):
    """Consecutive runs of network inputs of one size, at most ``batch_size`` long: the features stage's batching."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == batch_size or item.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def forward_settings(params: dict, features_h5: Path) -> tuple[str, int]:
    """Precision and batch size of the features stage's run: its file's attributes, else params.yaml."""
    # params.yaml read as it is (no rdfa module): this runs against workspaces of any version. A workspace
    # of an older version has no runtime.batch_size: it ran one image at a time.
    precision = (params.get("features") or {}).get("precision", "bf16")
    batch_size = (params.get("runtime") or {}).get("batch_size", 1) or 1
    try:
        import h5py

        with h5py.File(features_h5, "r") as f:
            precision = f.attrs.get("precision", precision)
            batch_size = int(f.attrs.get("batch_size", batch_size))
    except (ImportError, OSError):
        pass  # no file (the features stage did not run): the parameters say what it would use
    if isinstance(precision, bytes):
        precision = precision.decode()
    return str(precision), batch_size


def forward_only(dataset: str, workspace: Path) -> dict:
    """Seconds of the backbone alone on every network input the features stage computes (links skipped)."""
    import contextlib

    import numpy as np
    import torch
    import yaml

    from rdfa.io import backbones
    from rdfa.io.gnd import load_gnd
    from rdfa.io.images import SizePolicy, load_rgb, prepare_input
    from rdfa.io.keys import entries

    try:  # the process set-up every stage gets (run_stage): glibc keeps freed memory
        from rdfa.io.stage import keep_freed_memory
    except ImportError:  # a workspace from before it
        pass
    else:
        keep_freed_memory()

    params = yaml.safe_load((workspace / "params.yaml").read_text()) or {}
    rt = {"threads": 0, "device": "auto", **(params.get("runtime") or {})}
    torch.set_num_threads(rt["threads"] or os.cpu_count() or 1)  # as the features stage sets it
    precision, batch_size = forward_settings(params, workspace / "features" / dataset / "features.h5")
    name, weights = params["features"]["backbone"], params["features"].get("weights")
    notes, emulate = [], False
    try:
        backbone = backbones.build_backbone(name, weights, rt["device"], precision)
    except TypeError:  # a backbones module from before features.precision
        backbone = backbones.build_backbone(name, weights, rt["device"])
        emulate = precision != "fp32"
        if emulate:
            notes.append(f"build_backbone has no precision argument: {precision} by autocast here")
    if hasattr(backbone, "feature_maps"):
        call = backbone.feature_maps
    else:  # one image at a time, as the features stage did before batching
        batch_size = 1
        notes.append("no Backbone.feature_maps: one image per call")

        def call(images):
            return backbone.feature_map(images[0])[None]

    def context():
        if not emulate:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=torch.device(backbone.device).type, dtype=dtype)

    gnd = load_gnd(workspace / "data" / dataset)
    policy = SizePolicy.from_params(params["features"]["size"][dataset], f"features.size.{dataset}")
    images_dir = workspace / "data" / dataset / "images"

    def inputs():
        for entry in entries(gnd):
            if entry.same_as is None:
                source = images_dir / entry.name
                yield prepare_input(load_rgb(source), policy, backbone.stride, str(source), entry.box).image

    seconds, n, warm = 0.0, 0, False
    for batch in same_size_batches(inputs(), batch_size):
        images = np.stack(batch)
        if not warm:  # first call: allocator, cuDNN / oneDNN set-up, not the steady state
            with context():
                call(images)
            warm = True
        start = time.perf_counter()
        with context():
            call(images)  # returns host memory: the device's work is finished when it returns
        seconds += time.perf_counter() - start
        n += len(batch)
    return {"seconds": seconds, "network_inputs": n, "precision": precision, "batch_size": batch_size,
            "device": backbone.device, "note": "; ".join(notes) or None}


def measure_forward(dataset: str, workspace: Path, logs: Path, gpu_memory: bool) -> dict:
    """:func:`forward_only` in a child process in the workspace (its code, its params), measured like a stage."""
    fd, result = tempfile.mkstemp(prefix="rdfa-bench-forward-", suffix=".json")
    os.close(fd)
    try:
        argv = [sys.executable, str(Path(__file__).resolve()), dataset, "--workspace", str(workspace),
                "--forward-only", result]
        run = run_child(argv, workspace, child_env(workspace), logs / "forward.log", gpu_memory)
        if run["returncode"] != 0:
            raise RuntimeError(f"the bare-forward measurement failed (see {logs / 'forward.log'})")
        return dict(json.loads(Path(result).read_text()), peak_rss_mb=run["peak_rss_mb"],
                    **({"gpu_peak_mb": run["gpu_peak_mb"]} if "gpu_peak_mb" in run else {}))
    finally:
        os.unlink(result)


def git_commit(workspace: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=workspace,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return out.stdout.strip() + (" (modified)" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def run_params(workspace: Path, dataset: str) -> dict:
    """The parameters that decide the cost: the network, its precision and sizes, the runtime group."""
    import yaml

    params = yaml.safe_load((workspace / "params.yaml").read_text()) or {}
    features = params.get("features") or {}
    return {"features": {k: features.get(k) for k in ("backbone", "precision", "dtype")} |
            {"size": (features.get("size") or {}).get(dataset)},
            "runtime": params.get("runtime"), "regions": params.get("regions"), "pca": params.get("pca"),
            "whitening": params.get("whitening"), "methods.D": (params.get("methods") or {}).get("D")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="a dataset of the workspace's params.yaml (sources.<dataset>)")
    ap.add_argument("--workspace", default=str(REPO), help="a checkout of this repository to run in (default: "
                    "this one); its params.yaml is used as it is")
    ap.add_argument("--out", default=None, help="JSON records (default: bench/results/stages_<dataset>.json)")
    ap.add_argument("--stages", default=None, help="comma-separated stages to run (default: all, in order; "
                    "the others' outputs must exist)")
    ap.add_argument("--no-forward", dest="forward", action="store_false", help="skip the bare-forward measurement")
    ap.add_argument("--gpu-memory", choices=("auto", "on", "off"), default="auto",
                    help="peak GPU memory per stage (auto: when an NVIDIA driver is loaded)")
    ap.add_argument("--forward-only", metavar="JSON", help=argparse.SUPPRESS)  # the child of measure_forward
    args = ap.parse_args(argv)
    workspace = Path(args.workspace).resolve()
    if args.forward_only:
        Path(args.forward_only).write_text(json.dumps(forward_only(args.dataset, workspace)))
        return 0
    if not (workspace / "dvc.yaml").is_file():
        print(f"bench/stages.py: {workspace} has no dvc.yaml: --workspace must be a checkout", file=sys.stderr)
        return 2
    commands = stage_commands(workspace, args.dataset)
    if args.stages:
        wanted = args.stages.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in commands})
        if unknown:
            print(f"bench/stages.py: unknown stage(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        commands = [(name, argv) for name, argv in commands if name in wanted]
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"stages_{args.dataset}.json"
    logs = out.with_suffix(".logs")
    gpu_memory = args.gpu_memory == "on" or (args.gpu_memory == "auto" and Path("/proc/driver/nvidia").exists())
    partial = workspace / "features" / args.dataset / "features.h5.partial"
    if partial.exists() and any(name == "features" for name, _ in commands):
        partial.unlink()  # the features stage would resume from it: not a fresh run
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    runs = run_stages(commands, workspace, logs, gpu_memory)
    failed = runs and runs[-1]["returncode"] != 0
    forward = None
    if args.forward and not failed and any(r["stage"] == "features" for r in runs):
        print("bench: the bare forward on the same inputs", flush=True)
        forward = measure_forward(args.dataset, workspace, logs, gpu_memory)
    recs = records(runs, count_images(workspace, args.dataset), forward)
    load_end = os.getloadavg()
    title = (f"{args.dataset}: {len(runs)} stages on {platform.node()} ({os.cpu_count()} cores), load average "
             f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end")
    table = markdown(recs, title)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(recs, indent=1) + "\n")
    meta = {"dataset": args.dataset, "workspace": str(workspace), "commit": git_commit(workspace),
            "started": started, "host": platform.node(), "cpu_count": os.cpu_count(),
            "load_average_start": load_start, "load_average_end": load_end, "python": sys.executable,
            "params": run_params(workspace, args.dataset), "commands": {name: argv for name, argv in commands},
            "table": table}
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out} (dvc plots show {out} -x stage -y seconds), {out.with_suffix('.meta.json')}, logs in {logs}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
