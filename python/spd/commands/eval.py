"""``spd eval``: metrics of a model (a run directory, a saved model or a Hugging Face model)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from spd_kernels.nn import SparseLinear

from ..config import add_dataclass_arguments, build_config
from ..data import DataConfig, check_label_mapping, load_task
from ..metrics import collapse_text
from ..models import is_saved_model, load_pretrained, masked_linears
from ..pruning import model_sparsity
from ..trainer import evaluate_model
from ._common import fail, prepare_data

NAME = "eval"
HELP = "evaluate a model on the validation and/or test split"
DESCRIPTION = (
    "Evaluate a model alone (no grafting) on a task: MODEL is a run directory (its best/ model, or final/ "
    "with --which final), a saved spd model directory, a Hugging Face model name or path, or 'embedded'. "
    "Prints the metrics and the sparsity of the pruned layers as JSON."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory, Hugging Face name/path or 'embedded'")
    p.add_argument("--which", choices=("best", "final"), default="best", help="model of a run directory")
    p.add_argument(
        "--split", choices=("validation", "test", "both"), default="test", help="split(s) to evaluate"
    )
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device")
    p.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    add_dataclass_arguments(p, DataConfig, title="data")


def _resolve(path: str, which: str) -> str:
    cand = os.path.join(path, which)
    return cand if os.path.isdir(cand) and is_saved_model(cand) else path


def run(args) -> int:
    import torch

    try:
        data_cfg = build_config(DataConfig, args)
        path = _resolve(args.model, args.which)
        loaded = load_task(data_cfg)
        info0 = loaded[1]
        model, tokenizer = load_pretrained(path, info0.num_labels, "regression" if info0.regression else None)
        task, enc = prepare_data(data_cfg, tokenizer, loaded)
        if model.config.num_labels != task.num_labels:
            raise ValueError(f"{path} has {model.config.num_labels} labels, the task has {task.num_labels}")
        check_label_mapping(model.config, task, path)
        use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
        dev = torch.device("cuda" if use_cuda else "cpu")
        model.to(dev)
        splits = ("validation", "test") if args.split == "both" else (args.split,)
        masked = masked_linears(model)
        packed = [m for m in model.modules() if isinstance(m, SparseLinear)]
        if not masked and packed:  # an exported model: stored blocks over the packed layers
            stored = sum(m.weight.nnz for m in packed)
            total = sum(m.weight.shape[0] * m.weight.shape[1] for m in packed)
        out = {
            "model": path,
            "task": task.name,
            "sparsity": model_sparsity(masked) if masked else (1 - stored / total if packed else 0.0),
            **{s: evaluate_model(model, enc[s], task, args.batch_size, dev) for s in splits},
        }
        if task.report:
            out["data"] = task.report
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    for s in splits:
        if (out[s].get("collapse") or {}).get("flagged"):
            print(f"warning: collapse on {s}: {collapse_text(out[s]['collapse'])}", file=sys.stderr)
    text = json.dumps(out, indent=2, sort_keys=True)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0
