"""Pieces shared by the training subcommands (not a subcommand itself)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Dict, Tuple

from ..config import add_dataclass_arguments, build_config, load_config_file
from ..data import EMBEDDED_TASK, DataConfig, encode_split, load_task, report_data
from ..trainer import TrainConfig


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML or JSON file with any of the options below (sections data/train/pruning/distill/graft/"
        "stages, or flat keys); flags given on the command line win",
    )
    add_dataclass_arguments(parser, DataConfig, title="data")
    add_dataclass_arguments(parser, TrainConfig, title="training")


def data_and_train_configs(args, file_cfg) -> Tuple[DataConfig, TrainConfig]:
    return (
        build_config(DataConfig, args, file_cfg, section="data"),
        build_config(TrainConfig, args, file_cfg, section="train"),
    )


def read_config_file(args) -> Dict[str, Any]:
    return load_config_file(getattr(args, "config", None))


def prepare_data(data_cfg: DataConfig, tokenizer, loaded=None):
    """(task info, encoded splits) with the tokenisation cache; ``loaded`` = load_task's result
    when the caller already has it. Prints (stderr, main process) what the loader decided
    (carved splits, label mapping, samples) and what truncation cut, and keeps it in
    ``info.report`` for results.json."""
    splits, info = loaded if loaded is not None else load_task(data_cfg)
    enc = {
        k: encode_split(tokenizer, v, data_cfg.max_length, info.regression, data_cfg.cache_dir)
        for k, v in splits.items()
    }
    report_data(info, enc, data_cfg.max_length)
    return info, enc


def configure_torch(train_cfg: TrainConfig) -> None:
    import torch

    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def summary_line(results: Dict[str, Any]) -> str:
    """The final report's line; on imbalanced data (or a flagged model) macro-F1 and the recall
    of each class stand next to the main metric, and a model the collapse guard flagged says so."""
    m = results["metric"]
    best = results["best"]
    parts = [
        f"{results['task']}: best {m} validation {best['validation'].get(m, float('nan')):.4f}",
        f"test {best['test'].get(m, float('nan')):.4f}",
        f"sparsity {best.get('sparsity', 0.0):.3f}",
    ]
    check = best["validation"].get("collapse") or {}
    if check.get("imbalanced") or check.get("flagged"):
        rec = " ".join(f"{k} {v:.2f}" for k, v in check.get("recall", {}).items())
        parts.append(f"validation macro-F1 {check.get('macro_f1', float('nan')):.4f} (recall {rec})")
    if "teacher" in results:
        parts.append(f"teacher test {results['teacher']['test'].get(m, float('nan')):.4f}")
    line = ", ".join(parts)
    if check.get("flagged"):
        line += (
            f"; COLLAPSE: the model is near the majority class ({', '.join(check['reasons'])}; "
            f"majority {check['majority_class']!r} = {check['majority_share']:.3f} of validation)"
        )
    return line


DATA_RULES = 2  # carved splits, stratified seeded sample limits, labels from the values seen


def fingerprint(command: str, **configs) -> Dict[str, Any]:
    out: Dict[str, Any] = {"command": command}
    for name, cfg in configs.items():
        if dataclasses.is_dataclass(cfg):
            d = dataclasses.asdict(cfg)
            for k in (
                "output_dir",
                "progress",
                "log_every",
                "save_every",
                "resume",
                "threads",
                "cache_dir",
                "eval_batch_size",
            ):
                d.pop(k, None)  # settings that do not change the result
            if isinstance(cfg, DataConfig):
                # a checkpoint of the embedded data from before --label-order still resumes;
                # files and GLUE runs from before the carving / sampling rules do not (their
                # splits differ now)
                if d.get("label_order") is None:
                    d.pop("label_order", None)
                if d.get("task") != EMBEDDED_TASK:
                    d["rules"] = DATA_RULES
            out[name] = d
        else:
            out[name] = cfg
    return out


class Timer:
    def __enter__(self):
        self.t0 = time.time()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.time() - self.t0
