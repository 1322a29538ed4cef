"""`hybridcore check RUN_DIR [--json]`: the state of a run directory, read without changing anything.

Lists every checkpoint with its state (intact, damaged: what is wrong, incomplete, set aside), who holds
the run's lock, what metrics.jsonl holds, and which checkpoint `--resume` would start from. Exits 0
when run_config.json and every complete checkpoint are intact, 1 otherwise.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (`hybridcore train --out`)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def inspect_run(run_dir: str | Path) -> dict:
    from ..io.checkpoints import DAMAGED, checkpoint_step, verify_checkpoint
    from ..io.lock import holder_of
    from ..io.run_dir import CHECKPOINTS, LOCK_FILE, is_run_dir
    from .metrics import first_skipped_step, read_metrics
    from .run_config import read_run_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        raise ValueError(f"{run_dir}: not a training run directory (no run_config.json, metrics.jsonl or "
                         f"{CHECKPOINTS}/)")
    checkpoints = []
    root = run_dir / CHECKPOINTS
    for path in sorted(root.iterdir(), reverse=True) if root.is_dir() else []:
        if checkpoint_step(path) is not None:
            problem = verify_checkpoint(path)
            state = "intact" if problem is None else "damaged"
        elif path.name.endswith(DAMAGED):
            state, problem = "set aside", "found damaged by a resume"
        elif path.name.startswith((".tmp-", ".deleting-")):
            state, problem = "incomplete", "an interrupted write or deletion; the next train --resume removes it"
        else:
            continue
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        checkpoints.append({"name": path.name, "state": state, "problem": problem, "bytes": size})
    steps = [int(r["step"]) for r in read_metrics(run_dir) if "loss" in r]
    holder = holder_of(run_dir / LOCK_FILE)
    run_config = "intact"
    try:
        if read_run_config(run_dir) is None:
            run_config = "missing: --resume needs it (or --preset to start the run anew)"
    except ValueError as error:
        run_config = f"damaged: {error}"
    intact = [c["name"] for c in checkpoints if c["state"] == "intact"]
    return {"run_dir": str(run_dir), "locked_by": holder.describe() if holder else None, "run_config": run_config,
            "checkpoints": checkpoints,
            "metrics_steps": [min(steps), max(steps)] if steps else None,
            "first_non_finite_step": first_skipped_step(read_metrics(run_dir)),
            "resume_from": intact[0] if intact else None,
            "superseded": sorted(p.name for p in run_dir.glob("superseded-*") if p.is_dir())}


def run(args) -> int:
    from ..io.json_codec import dumps

    report = inspect_run(args.run_dir)
    if args.json:
        print(dumps(report, indent=2))
    else:
        print(_text(report))
    damaged = report["run_config"] != "intact" or any(c["state"] == "damaged" for c in report["checkpoints"])
    return 1 if damaged else 0


def _text(report: dict) -> str:
    holder = "held by " + report["locked_by"] if report["locked_by"] else "free (no process trains here)"
    lines = [f"run          {report['run_dir']}", f"lock         {holder}",
             f"run_config   {report['run_config']}"]
    steps = report["metrics_steps"]
    bad = report["first_non_finite_step"]
    lines.append(f"metrics      {'steps %d-%d' % tuple(steps) if steps else 'no step yet'}"
                 + (f"; first non-finite step {bad}" if bad is not None else ""))
    lines.append("checkpoints  " + ("none" if not report["checkpoints"] else "newest first:"))
    for item in report["checkpoints"]:
        why = f": {item['problem']}" if item["problem"] else ""
        lines.append(f"  {item['name']:<24} {item['bytes'] / 2 ** 20:8.1f} MiB  {item['state']}{why}")
    for folder in report["superseded"]:
        lines.append(f"superseded   {folder} (what a --resume-from set aside)")
    start = "continues from " + report["resume_from"] if report["resume_from"] else "starts at step 0"
    if report["run_config"] != "intact":
        start = "cannot start: run_config.json is " + report["run_config"].split(":")[0]
    lines.append(f"--resume     {start}")
    return "\n".join(lines)
