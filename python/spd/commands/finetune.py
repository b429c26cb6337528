"""``spd finetune``: fine-tune a dense model on a task (the teacher of SPD)."""

from __future__ import annotations

import argparse

from ..config import check_file_sections
from ..data import DataConfig
from ..distributed import cleanup, init_distributed
from ..methods import check_epochs_and_lr, finetune_phases
from ..models import load_tokenizer
from ..trainer import TrainConfig, Trainer
from ._common import (
    Timer,
    add_common_arguments,
    configure_torch,
    data_and_train_configs,
    fail,
    fingerprint,
    prepare_data,
    read_config_file,
    summary_line,
)

NAME = "finetune"
HELP = "fine-tune a dense model on a task (SPD's stage 1 on its own)"
DESCRIPTION = (
    "Fine-tune a BERT-family sequence classifier (default: the embedded all-MiniLM-L6-v2 on the embedded "
    "Rotten Tomatoes data) with AdamW, linear warm-up/decay, gradient clipping and evaluation every epoch. "
    "Writes OUTPUT_DIR/best (best validation), final, results.json, metrics.jsonl and a resumable "
    "checkpoint. "
    "Runs data-parallel under torchrun / accelerate launch."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    # no argparse defaults: a config file may set these too (the flag wins); defaults in run()
    p.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="Hugging Face name or path, a saved spd model, or 'embedded' (the packaged "
        "all-MiniLM-L6-v2) (default: embedded)",
    )
    p.add_argument("--epochs", type=int, default=argparse.SUPPRESS, help="training epochs (default: 3)")
    p.add_argument("--lr", type=float, default=argparse.SUPPRESS, help="peak learning rate (default: 5e-05)")
    add_common_arguments(p)


def run(args) -> int:
    try:
        file_cfg = read_config_file(args)
        top = {"model": "embedded", "epochs": 3, "lr": 5e-5}
        for k in top:
            top[k] = getattr(args, k, None) if hasattr(args, k) else file_cfg.pop(k, top[k])
        if not isinstance(top["model"], str):
            raise ValueError(f"config file: model must be a str, got {top['model']!r}")
        check_epochs_and_lr("", top["epochs"], top["lr"], minimum=1)
        args.model, args.epochs, args.lr = top["model"], top["epochs"], float(top["lr"])
        check_file_sections(file_cfg, {"data": DataConfig, "train": TrainConfig})
        data_cfg, train_cfg = data_and_train_configs(args, file_cfg)
    except (ValueError, TypeError, OSError) as e:  # OSError: files, and transformers' loaders
        return fail(str(e))
    info = init_distributed(train_cfg.device)
    try:
        configure_torch(train_cfg)
        tokenizer = load_tokenizer(args.model)
        task, enc = prepare_data(data_cfg, tokenizer)
        fp = fingerprint(
            "finetune",
            model=args.model,
            epochs=args.epochs,
            lr=args.lr,
            data=data_cfg,
            train=train_cfg,
            world_size=info.world_size,
        )
        trainer = Trainer(train_cfg, info, task, enc, tokenizer, fp)
        phases = finetune_phases(args.model, args.epochs, args.lr, task.num_labels, task.regression)
        with Timer() as t:
            model, _ = trainer.run(phases)
        results = trainer.finish(
            model,
            None,
            {
                "command": "finetune",
                "method": "dense",
                "model": args.model,
                "seed": train_cfg.seed,
                "train_time_s": round(t.elapsed, 1),
            },
        )
        if info.is_main:
            print(summary_line(results))
        return 0
    except (ValueError, TypeError, OSError) as e:  # OSError: files, and transformers' loaders
        return fail(str(e))
    finally:
        cleanup(info)
