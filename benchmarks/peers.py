"""recbert against peer SASRec implementations on Amazon Beauty (issue #8): the same data,
model size (hidden 64, 2 layers, 2 heads, inner 256, max_len 50, dropout 0.5), full
softmax over the catalogue, batch 256, Adam lr 1e-3, on the same machine, one run after
the other (never in parallel), each in its own process so its peak RSS is its own. Every
system trains for the same wall budget (stop after the epoch that crosses it, no
validation meanwhile), then ranks its test users against the full catalogue. Prints
seconds per epoch, sequences/s and targets/s, NDCG@10 and HR@10 under both protocols,
peak RSS, and the ratios recbert/peer.

Set-up, once (the peers live in their own virtualenv, outside the project and its
dependencies; RecBole 1.2.1 needs numpy 1.26.4 and setuptools < 70):

    bash benchmarks/peers/setup.sh                # $PEER_VENV, default ~/.cache/recbert-peers/venv

Run (in the project's venv; each system takes the budget plus up to one more epoch, plus a
minute or two for data and evaluation):

    .venv/bin/python benchmarks/peers.py [--budget-seconds 300] [--only recbert,recbole,rectools]
                                         [--peer-venv DIR] [--jemalloc-peers] [--json out.json]

A smoke run of the whole chain takes a few minutes: ``--budget-seconds 10 --users 2000``
(the first 2,000 users of Beauty.txt; its figures mean nothing).

The machine must be otherwise idle for figures worth recording: the report warns about
other busy processes it saw before each run. recbert's child re-runs itself under jemalloc
(``recbert.allocator.reexec_with_fast_allocator``), as the ``recbert`` console script does;
the peers run on glibc malloc unless ``--jemalloc-peers``. recbert trains with its
next-item objective, post-norm blocks, no output transform, no weight decay, warm-up or
gradient clipping and a constant learning rate, which is what RecBole's SASRec does.
Each peer script (``benchmarks/peers/*.py``) says how it counts sequences and which
protocol its library's own evaluation uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbert.allocator import allocator_name, fast_allocator_env, reexec_with_fast_allocator  # noqa: E402

PEERS = ROOT / "benchmarks" / "peers"
BEAUTY = ROOT.parent / "shared" / "data" / "beauty" / "Beauty.txt"
DEFAULT_VENV = Path(os.environ.get("PEER_VENV", Path.home() / ".cache" / "recbert-peers" / "venv"))
RESULT_MARK = "PEER_RESULT "  # the prefix of a child's result line (benchmarks/peers/common.py)
SYSTEMS = ("recbert", "recbole", "rectools")
PEER_SCRIPTS = {"recbole": "recbole_sasrec.py", "rectools": "rectools_sasrec.py"}


# -- the recbert child ------------------------------------------------------------------
def recbert_overrides(events: Path, budget_seconds: float, threads: int) -> list[str]:
    return [f"data.events={events}", "model.hidden=64", "model.layers=2", "model.heads=2", "model.intermediate=256",
            "model.max_len=50", "model.dropout=0.5", "model.attention_dropout=0.5", "model.norm=post",
            "model.output_transform=false", "train.objective=next_item", "train.loss=full_softmax",
            "train.batch_size=256", "train.lr=0.001", "train.weight_decay=0", "train.warmup_ratio=0",
            "train.schedule=constant", "train.grad_clip=0", "train.epochs=1000000", "train.eval_every=1000000",
            f"train.max_minutes={budget_seconds / 60}", "tracking.enabled=false", f"threads={threads}", "seed=0"]


def run_recbert(data: Path, budget_seconds: float, threads: int) -> dict[str, Any]:
    """Train and test recbert as the peers do; its result as the peer scripts give theirs."""
    import resource
    from importlib.metadata import version

    from recbert.config import RunConfig
    from recbert.data.batches import training_windows
    from recbert.data.importers import import_s3rec
    from recbert.data.prepare import prepare_data
    from recbert.evaluation.ranking import evaluate_ranking
    from recbert.jobs.train import build_model
    from recbert.runtime import seed_everything, set_threads
    from recbert.training.trainer import train_stage

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        import_s3rec(data, Path(tmp) / "beauty")
        cfg = RunConfig.load(None, recbert_overrides(Path(tmp) / "beauty" / "events.parquet", budget_seconds, threads))
        set_threads(cfg.threads)
        seed_everything(cfg.seed)
        vocab, splits = prepare_data(cfg)
        model = build_model(cfg, vocab)
        prep_seconds = time.perf_counter() - t0
        res = train_stage(model, splits, cfg.train, cfg.eval, seed=cfg.seed)
        t0 = time.perf_counter()
        m = evaluate_ranking(model, splits.test, dataclasses.replace(cfg.eval, sampled_negatives=0))
        eval_seconds = time.perf_counter() - t0
    windows = training_windows(splits.train, cfg.model.max_len + 1, cfg.model.max_len, min_len=2)
    import torch  # already loaded by recbert

    return {"system": "recbert", "version": version("recbert"), "budget_seconds": budget_seconds,
            "epoch_seconds": [h["train/epoch_seconds"] for h in res.history], "prep_seconds": prep_seconds,
            "eval_seconds": eval_seconds, "sequences_per_epoch": res.sequences // max(res.epochs_run, 1),
            "targets_per_epoch": int((windows.ends - windows.starts - 1).sum()),
            "sequence_unit": "training window (a user's training sequence, <= max_len + 1 events, "
                             "a target at every position)",
            "test_users": int(m["n_users"]), "items": vocab.n_items,
            "metrics": {p: {k: m[f"{p}/{k}"] for k in ("ndcg@10", "hr@10")} for p in ("all", "unseen")},
            "notes": "next_item objective, post-norm blocks (as RecBole's SASRec), no output transform, full "
                     "softmax at every position; constant lr, no weight decay, warm-up or clipping",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "allocator": allocator_name(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- the driver ---------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    name: str
    result: Optional[dict[str, Any]]
    rss_mib: float  # the child's peak RSS, from wait4
    wall_seconds: float
    note: str = ""


def cpu_ticks() -> dict[int, int]:
    """pid -> CPU time so far (user + system, in clock ticks) of every process but this one."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry.name)] = int(fields[11]) + int(fields[12])
    return out


def busy_processes(before: dict[int, int], after: dict[int, int], seconds: float,
                   threshold: float = 0.1) -> list[str]:
    """Processes in both snapshots that used more than ``threshold`` of a core between them
    (``seconds`` apart); a child started in between is in neither."""
    busy = []
    for pid, t in after.items():
        share = (t - before.get(pid, t)) / os.sysconf("SC_CLK_TCK") / max(seconds, 1e-9)
        if share > threshold:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            busy.append(f"pid {pid} {share:.0%} of a core: {cmd[:80]}")
    return busy


def child_command(name: str, args: argparse.Namespace, data: Path) -> tuple[Optional[list[str]], str]:
    """The command that runs ``name`` on ``data``, or None and why it cannot run."""
    common = ["--budget-seconds", str(args.budget_seconds), "--threads", str(args.threads), "--data", str(data)]
    if name == "recbert":
        return [sys.executable, str(Path(__file__).resolve()), "--child-recbert", *common], ""
    venv = args.peer_venv
    if name == "rectools":
        status = venv / "rectools.status"
        if not status.exists():
            return None, f"{status} missing: run benchmarks/peers/setup.sh"
        line = status.read_text().strip()
        if not Path(line).is_dir():
            return None, f"RecTools {line}"
        venv = Path(line)
    python = venv / "bin" / "python"
    if not python.exists():
        return None, f"{python} missing: run benchmarks/peers/setup.sh"
    return [str(python), str(PEERS / PEER_SCRIPTS[name]), *common], ""


def run_child(name: str, command: list[str], env: Optional[dict]) -> Run:
    """Run one system; its log goes to stderr, its result line is parsed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    result = None
    for line in proc.stdout:
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
        else:
            sys.stderr.write(line)
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    note = "" if result else f"failed (exit {proc.returncode}), no result"
    return Run(name, result, usage.ru_maxrss / 1024, time.perf_counter() - t0, note)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal")) / 2**20
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}, Python {platform.python_version()}"


def figures(r: dict[str, Any], rss: float) -> dict[str, float]:
    mean = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
    m = r["metrics"]
    return {"s/epoch": mean, "seq/s": r["sequences_per_epoch"] / mean, "targets/s": r["targets_per_epoch"] / mean,
            "NDCG@10 all": m["all"]["ndcg@10"], "HR@10 all": m["all"]["hr@10"],
            "NDCG@10 unseen": m["unseen"]["ndcg@10"], "HR@10 unseen": m["unseen"]["hr@10"], "peak RSS MiB": rss}


def report(runs: list[Run], budget: float, data: str, warnings: list[str]) -> str:
    def cell(key: str, v: float) -> str:
        return f"{v:.4f}" if key.startswith(("NDCG", "HR")) else f"{v:.1f}" if key == "s/epoch" else f"{v:.0f}"

    done = [r for r in runs if r.result]
    torch_versions = sorted({r.result["torch"] for r in done})
    lines = [f"# recbert vs peer SASRec on {data}, {budget:g} s training budget each", "",
             f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; machine: {machine()}; "
             f"torch {', '.join(torch_versions)}", ""]
    keys = list(figures(done[0].result, 0.0)) if done else []
    lines += ["| system | version | allocator | threads | epochs | " + " | ".join(keys) + " |",
              "|---" * (5 + len(keys)) + "|"]
    for r in done:
        f = figures(r.result, r.rss_mib)
        lines.append(f"| {r.name} | {r.result['version']} | {r.result['allocator'].split(' (')[0]} | "
                     f"{r.result['threads']} | "
                     f"{len(r.result['epoch_seconds'])} | " + " | ".join(cell(k, f[k]) for k in keys) + " |")
    base = next((r for r in done if r.name == "recbert"), None)
    peers = [r for r in done if r.name != "recbert"]
    if base and peers:
        b = figures(base.result, base.rss_mib)
        lines += ["", "ratios recbert / peer (recbert is ahead where s/epoch and peak RSS are below 1 "
                      "and the rest above 1)", "",
                  "| peer | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
        for r in peers:
            f = figures(r.result, r.rss_mib)
            lines.append(f"| {r.name} | " + " | ".join(f"{b[k] / f[k]:.2f}" if f[k] else "-" for k in keys) + " |")
    lines += ["", "models:"] + [f"- {r.name}: {r.result['notes']}" for r in done]
    lines += ["", "sequences counted per system (targets/s is the like-for-like rate):"]
    lines += [f"- {r.name}: {r.result['sequences_per_epoch']} {r.result['sequence_unit']} per epoch, "
              f"{r.result['targets_per_epoch']} targets; data prep {r.result['prep_seconds']:.1f} s, "
              f"test evaluation {r.result['eval_seconds']:.1f} s, whole run {r.wall_seconds:.0f} s" for r in done]
    lines += ["", "protocols: all = target ranked against every item; unseen = the user's input history removed "
                  "first (recbert's and RecTools' filter_viewed). RecBole's own full-sort evaluation of a sequential "
                  "model is 'all' (it masks no history); recbole_own below is its own evaluator's figure."]
    lines += [f"- recbole_own: {json.dumps(r.result['recbole_own'])}" for r in done if "recbole_own" in r.result]
    lines += [f"- {r.name}: {r.note[:300]}" for r in runs if r.note]
    lines += ["", "peak RSS: each child's own (wait4). recbert's child re-ran itself under jemalloc when "
                  "installed, as the recbert CLI does: " + (base.result["allocator"] if base else "not run")]
    lines += [f"WARNING: {w}" for w in warnings] or ["no other busy process seen before or during the runs"]
    return "\n".join(lines)


def run_all(names: list[str], args: argparse.Namespace, data: Path) -> tuple[list[Run], list[str]]:
    """Each system in turn; the runs, and warnings naming the other processes busy
    before and during each."""
    runs, warnings = [], []
    for name in names:
        command, why = child_command(name, args, data)
        if command is None:
            runs.append(Run(name, None, 0.0, 0.0, f"not run: {why}"))
            continue
        load = float(Path("/proc/loadavg").read_text().split()[0])  # lags: holds the previous child too
        start = cpu_ticks()
        time.sleep(1.0)
        before = cpu_ticks()
        busy = busy_processes(start, before, 1.0)
        if busy:
            warnings.append(f"before {name} (load average {load:.2f}): " + "; ".join(busy))
        print(f"[peers] {name}: {' '.join(command)}", file=sys.stderr, flush=True)
        env = fast_allocator_env() if args.jemalloc_peers and name != "recbert" else None
        runs.append(run_child(name, command, env))
        during = busy_processes(before, cpu_ticks(), runs[-1].wall_seconds)
        if during:
            warnings.append(f"during {name} ({runs[-1].wall_seconds:.0f} s): " + "; ".join(during))
    return runs, warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-seconds", type=float, default=300.0)
    ap.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    ap.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV, help=f"default $PEER_VENV or {DEFAULT_VENV}")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads of every system (default 2)")
    ap.add_argument("--jemalloc-peers", action="store_true", help="run the peers under jemalloc too")
    ap.add_argument("--users", type=int, help="smoke runs: only the first N users of Beauty.txt")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--child-recbert", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=BEAUTY, help=argparse.SUPPRESS)  # the children's input
    args = ap.parse_args()
    if args.child_recbert:
        reexec_with_fast_allocator()  # as the recbert console script runs
        result = run_recbert(args.data, args.budget_seconds, args.threads)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; choose from {SYSTEMS}")
    with tempfile.TemporaryDirectory() as tmp:
        data, label = BEAUTY, "Beauty"
        if args.users:
            data, label = Path(tmp) / "Beauty.txt", f"Beauty (smoke: first {args.users} users)"
            data.write_text("".join(BEAUTY.read_text().splitlines(keepends=True)[:args.users]))
        runs, warnings = run_all(names, args, data)
    print(report(runs, args.budget_seconds, label, warnings))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in runs], indent=2) + "\n")


if __name__ == "__main__":
    main()
