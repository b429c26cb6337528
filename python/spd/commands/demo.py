"""``spd demo``: the whole job on the embedded default, end to end, into one report folder."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Dict, List

NAME = "demo"
HELP = "fine-tune, SPD-prune, export, evaluate and profile on the embedded model and data"
DESCRIPTION = (
    "The whole job on the embedded default (all-MiniLM-L6-v2 + Rotten Tomatoes, no network): "
    "(1) fine-tune the dense teacher briefly, (2) Sparse Progressive Distillation to --sparsity at "
    "--granularity (pruning + grafting + distillation, then distillation of the sparse student), "
    "(3) export the student to packed sparse layers, (4) evaluate teacher, masked student and exported "
    "student on the test split, (5) profile the exported model against its dense twin and the "
    "kernels on the model's layer shapes. Writes OUTPUT_DIR/summary.md, results.json and the plots. "
    "The defaults finish in about 15 minutes on 2 CPU cores; raise --max-train-samples and the epoch "
    "counts (or drop --max-train-samples with 0) for accuracy closer to the paper's. Re-running resumes "
    "each finished or interrupted stage."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="reports/demo", help="report folder (runs/ go inside it)")
    p.add_argument("--model", default="embedded", help="dense model to start from (name, path or 'embedded')")
    p.add_argument("--sparsity", type=float, default=0.9, help="target sparsity of the encoder linears")
    p.add_argument("--granularity", default="block32", help="element, or blockN / blockNxM")
    p.add_argument(
        "--max-train-samples", type=int, default=4096, help="training examples used (0 = all 10246)"
    )
    p.add_argument(
        "--max-eval-samples", type=int, default=640, help="validation/test examples used (0 = all 1281)"
    )
    p.add_argument("--max-length", type=int, default=48, help="tokens per sentence for training/eval")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--teacher-epochs", type=int, default=2, help="stage 1 epochs (dense teacher)")
    p.add_argument("--prune-epochs", type=int, default=2, help="stage 2 epochs (pruning + grafting)")
    p.add_argument("--final-epochs", type=int, default=1, help="stage 3 epochs (sparse distillation)")
    p.add_argument("--teacher-lr", type=float, default=1e-4, help="stage 1 learning rate")
    p.add_argument("--prune-lr", type=float, default=6e-4, help="stage 2 learning rate")
    p.add_argument("--final-lr", type=float, default=3e-4, help="stage 3 learning rate")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--profile-batch", type=int, default=32, help="batch of the end-to-end timing")
    p.add_argument(
        "--profile-seq-len", type=int, default=128, help="sequence length of the end-to-end timing"
    )
    p.add_argument("--no-kernel-profile", action="store_true", help="skip the per-layer kernel grid")
    p.add_argument(
        "data_args",
        nargs=argparse.REMAINDER,
        help="after '--': data options passed to finetune, prune and eval (e.g. -- --task sst2); "
        "the default is the embedded Rotten Tomatoes data",
    )


def _step(title: str, argv: List[str]) -> None:
    from ..cli import main

    print(f"\n=== {title}: spd {' '.join(argv)}", flush=True)
    t0 = time.time()
    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"step '{title}' failed (exit {rc}): spd {' '.join(argv)}")
    print(f"=== {title}: done in {time.time() - t0:.0f} s", flush=True)


def _read_json(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)


def _plot_training(runs: Dict[str, str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    offset = 0
    names = {"finetune": "1 teacher", "spd": "2 SPD: prune + graft", "distill": "3 distill sparse student"}
    for label, run in runs.items():
        rows = []
        with open(os.path.join(run, "metrics.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                if "loss" in r and "global_step" in r:
                    rows.append(r)
        if not rows:
            continue
        # one curve per training stage (the student run holds stages 2 and 3)
        for phase in dict.fromkeys(r["phase"] for r in rows):
            part = [r for r in rows if r["phase"] == phase]
            steps = [offset + r["global_step"] for r in part]
            name = names.get(phase, f"{label}: {phase}")
            axes[0].plot(steps, [r["loss"] for r in part], label=name)
            axes[1].plot(steps, [r.get("sparsity", 0.0) for r in part], label=name)
            axes[2].plot(steps, [r.get("p", 1.0) for r in part], label=name)
            for ax in axes:
                ax.axvline(steps[0], color="grey", lw=0.5, ls=":")
        offset += rows[-1]["global_step"]
    for ax, title in zip(
        axes, ("training loss", "sparsity of the encoder linears", "grafting probability p")
    ):
        ax.set_xlabel("optimizer step (teacher, then SPD stages)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("sparsity")
    axes[2].set_ylabel("p")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _model_speedup(csv_path: str) -> Dict[str, object]:
    import csv

    from spd_kernels.profiling.report import DENSE_IMPLS

    out: Dict[str, object] = {}
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r.get("status", "ok") != "ok":
            continue
        if r.get("impl") == "spd_kernels":
            out[r["op"]] = float(r["speedup_vs_best_dense"])
            out[r["op"] + "_p50_ms"] = float(r["p50_ms"])
        elif r.get("impl") in DENSE_IMPLS:  # the fastest dense engine the speedup is against
            key = r["op"] + "_dense_p50_ms"
            if float(r["p50_ms"]) < out.get(key, float("inf")):
                out[key] = float(r["p50_ms"])
                out[r["op"] + "_dense_impl"] = r["impl"]
    return out


def _collapse_warning(metrics: Dict) -> List[str]:
    """A line for the summary when the collapse guard of the trainer
    (:func:`spd.metrics.collapse_check`, in every evaluation) flagged ``metrics``: the model
    answers (nearly) one class, so its accuracy is about the class balance of the split."""
    from ..metrics import collapse_text

    check = metrics.get("collapse") or {}
    if not check.get("flagged"):
        return []
    share = check.get("top_class_share", 0.0)
    what = (
        f"the student predicts one class for {share:.0%} of the test sentences"
        if share >= 0.95
        else "the student is near the majority class on the test sentences"
    )
    return [
        f"**Note:** {what}: at this budget it has not recovered from the pruning "
        f"({collapse_text(check)}). Scale the run up (`--max-train-samples`, `--prune-epochs`, "
        "`--final-epochs`) or use `--granularity element`; see README, Training.",
        "",
    ]


def run(args) -> int:
    import torch

    from ._common import fail

    if not 0.0 < args.sparsity < 1.0:
        return fail(f"--sparsity must lie in (0, 1), got {args.sparsity}")
    out = os.path.abspath(args.output_dir)
    runs = os.path.join(out, "runs")
    teacher_dir = os.path.join(runs, "teacher")
    student_dir = os.path.join(runs, f"spd-{args.granularity}")
    exported = os.path.join(out, "exported")
    os.makedirs(runs, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    common = [
        "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
        "--threads", str(args.threads), "--seed", str(args.seed),
    ]  # fmt: skip
    if args.max_train_samples:
        common += ["--max-train-samples", str(args.max_train_samples)]
    eval_limit = ["--max-eval-samples", str(args.max_eval_samples)] if args.max_eval_samples else []
    common += eval_limit
    data_args = [a for a in (args.data_args or []) if a != "--"]
    common += data_args
    t_start = time.time()
    timings = {}
    try:
        t0 = time.time()
        _step(
            "1/5 teacher",
            [
                "finetune",
                "--model",
                args.model,
                "--epochs",
                str(args.teacher_epochs),
                "--lr",
                str(args.teacher_lr),
                "--output-dir",
                teacher_dir,
                *common,
            ],
        )
        timings["teacher_s"] = time.time() - t0
        t0 = time.time()
        _step(
            "2/5 SPD",
            [
                "prune",
                "--method",
                "spd",
                "--teacher",
                os.path.join(teacher_dir, "best"),
                "--sparsity",
                str(args.sparsity),
                "--granularity",
                args.granularity,
                "--prune-epochs",
                str(args.prune_epochs),
                "--final-epochs",
                str(args.final_epochs),
                "--prune-lr",
                str(args.prune_lr),
                "--final-lr",
                str(args.final_lr),
                "--output-dir",
                student_dir,
                *common,
            ],
        )
        timings["spd_s"] = time.time() - t0
        t0 = time.time()
        _step("3/5 export", ["export", student_dir, "--output-dir", exported])
        _step(
            "4/5 evaluate exported",
            [
                "eval",
                exported,
                "--split",
                "test",
                "--max-length",
                str(args.max_length),
                *eval_limit,
                *data_args,
                "--output",
                os.path.join(out, "exported_eval.json"),
            ],
        )
        timings["export_eval_s"] = time.time() - t0
        t0 = time.time()
        prof_model = os.path.join(out, "profile_model")
        _step(
            "5/5 profile model",
            [
                "profile",
                "--model",
                exported,
                "--batch",
                str(args.profile_batch),
                "--seq-len",
                str(args.profile_seq_len),
                "--threads",
                str(args.threads),
                "--no-compile",
                "--no-progress",
                "--out",
                prof_model,
            ],
        )
        if not args.no_kernel_profile:
            _step(
                "5/5 profile kernels",
                [
                    "profile",
                    "--preset",
                    "minilm",
                    "--layouts",
                    "csr",
                    "bsr32",
                    "--sparsities",
                    "0.5",
                    "0.9",
                    "0.95",
                    "--ops",
                    "forward",
                    "fwd_bwd",
                    "--baselines",
                    "eager",
                    "--threads",
                    str(args.threads),
                    "--no-progress",
                    "--out",
                    os.path.join(out, "profile_kernels"),
                ],
            )
        timings["profile_s"] = time.time() - t0
    except RuntimeError as e:
        return fail(str(e))

    teacher = _read_json(os.path.join(teacher_dir, "results.json"))
    student = _read_json(os.path.join(student_dir, "results.json"))
    exported_eval = _read_json(os.path.join(out, "exported_eval.json"))
    speed = _model_speedup(os.path.join(prof_model, "model.csv"))
    t_acc = teacher["best"]["test"]["accuracy"]
    s_acc = student["best"]["test"]["accuracy"]
    e_acc = exported_eval["test"]["accuracy"]
    _plot_training({"teacher": teacher_dir, "SPD student": student_dir}, os.path.join(out, "training.png"))
    sizes = {}
    for name in os.listdir(exported):
        sizes[name] = os.path.getsize(os.path.join(exported, name))
    results = {
        "model": args.model,
        "task": exported_eval["task"],
        "sparsity_target": args.sparsity,
        "granularity": args.granularity,
        "student_sparsity": student["best"].get("sparsity"),
        "teacher_test_accuracy": t_acc,
        "student_test_accuracy": s_acc,
        "exported_test_accuracy": e_acc,
        "retained_accuracy": s_acc / t_acc if t_acc else None,
        # the trainer's collapse guard: the student (validation) and the exported model (test)
        "collapse": {"student": student.get("collapse"), "exported": exported_eval["test"].get("collapse")},
        "model_speedup": speed,
        "exported_files_bytes": sizes,
        "timings_s": {**timings, "total_s": time.time() - t_start},
        "settings": vars(args) | {"_run": None},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True, default=str)
    fwd = speed.get("model_forward")
    lines = [
        "# spd demo: Sparse Progressive Distillation on the embedded default",
        "",
        f"Model `{args.model}`{' (all-MiniLM-L6-v2)' if args.model == 'embedded' else ''}, "
        f"task `{exported_eval['task']}` (test split), "
        f"{args.sparsity:.0%} sparsity of all encoder linears at `{args.granularity}` granularity.",
        f"Machine: {results['machine']['processor']}, {args.threads} threads, torch {torch.__version__}.",
        "",
        "| model | test accuracy | vs teacher |",
        "|---|---|---|",
        f"| dense teacher | {t_acc:.4f} | 100.0 % |",
        f"| SPD student (masked, best) | {s_acc:.4f} | {100 * s_acc / t_acc:.1f} % |",
        f"| SPD student exported (packed kernels) | {e_acc:.4f} | {100 * e_acc / t_acc:.1f} % |",
        "",
        f"End-to-end forward, batch {args.profile_batch} x {args.profile_seq_len} tokens: exported sparse "
        + (
            f"model {speed.get('model_forward_p50_ms', float('nan')):.1f} ms vs the fastest dense engine "
            f"({speed.get('model_forward_dense_impl', '?')}) "
            f"{speed.get('model_forward_dense_p50_ms', float('nan')):.1f} ms: **{fwd:.2f}x**."
            if fwd
            else "timing missing (see profile_model/)."
        ),
        "",
        *_collapse_warning(exported_eval["test"]),
        f"Settings: {args.max_train_samples or 'all'} training sentences, max length {args.max_length}, "
        f"teacher {args.teacher_epochs} epochs, SPD {args.prune_epochs} + {args.final_epochs} epochs. "
        "A short CPU run: accuracy grows with more data and epochs (README, Training).",
        "",
        "Files: `training.png` (loss, sparsity, p), `profile_model/` (end-to-end timing), "
        "`profile_kernels/` (per-layer kernels: CSV, table, `speedup.png`), `exported/` (the packed model), "
        "`runs/` (checkpoints and metrics logs), `results.json`.",
        "",
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items()),
    ]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {out}")
    return 0
