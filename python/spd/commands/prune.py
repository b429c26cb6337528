"""``spd prune``: SPD or a pruning baseline to a target sparsity."""

from __future__ import annotations

import argparse

from ..config import add_dataclass_arguments, build_config, check_file_sections
from ..data import DataConfig, check_label_mapping
from ..distill import DistillConfig
from ..distributed import cleanup, init_distributed
from ..grafting import GraftConfig
from ..methods import (
    PRUNE_METHODS,
    StageConfig,
    method_distill_defaults,
    method_pruning_defaults,
    method_stage_defaults,
    method_train_defaults,
    prune_phases,
    spd_pruning_config,
)
from ..models import check_block_fits, load_pretrained, load_tokenizer
from ..pruning import PruningConfig
from ..trainer import TrainConfig, Trainer
from ._common import (
    Timer,
    add_common_arguments,
    configure_torch,
    fail,
    fingerprint,
    prepare_data,
    read_config_file,
    summary_line,
)

NAME = "prune"
HELP = "prune to a target sparsity with SPD, movement, soft movement or magnitude pruning"
DESCRIPTION = (
    "Prune the encoder linears (query, key, value, attention output, intermediate, output) of a "
    "BERT-family classifier to --sparsity. "
    "spd: Sparse Progressive Distillation: (1) fine-tune the teacher unless --teacher is given, "
    "(2) magnitude pruning on the cubic schedule with module grafting (each layer position uses the "
    "student's layer with probability p rising to 1) and hidden + attention + logit distillation, "
    "(3) distillation of the fully sparse student at p = 1 with a fresh learning-rate cycle. "
    "magnitude: |W| top-k on the cubic schedule (--scope local or global), then fixed-mask fine-tuning. "
    "movement: learnable scores (straight-through), top-k on the scores. "
    "soft-movement: sigmoid(scores) > threshold with an L1 penalty on sigmoid(scores); exact budget at "
    "the end. Baselines use the labels, plus the teacher's logits with --kd. Writes OUTPUT_DIR/best, "
    "final, results.json, metrics.jsonl and a resumable checkpoint; runs data-parallel under torchrun / "
    "accelerate launch."
)

SECTIONS = {
    "data": DataConfig,
    "train": TrainConfig,
    "pruning": PruningConfig,
    "distill": DistillConfig,
    "graft": GraftConfig,
    "stages": StageConfig,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method", choices=PRUNE_METHODS, default=argparse.SUPPRESS, help="pruning method (default: spd)"
    )
    add_dataclass_arguments(p, StageConfig, title="models and stages")
    add_dataclass_arguments(p, PruningConfig, title="pruning", exclude=("method",))
    add_dataclass_arguments(
        p,
        DistillConfig,
        title="distillation (defaults depend on --method: spd = hidden + attention + logit; "
        "baselines = labels, with --kd labels + logits)",
    )
    add_dataclass_arguments(p, GraftConfig, prefix="graft_", title="grafting (spd only)")
    add_common_arguments(p)


def run(args) -> int:
    try:
        file_cfg = read_config_file(args)
        method = getattr(args, "method", None) or file_cfg.pop("method", None) or "spd"
        if method not in PRUNE_METHODS:
            raise ValueError(f"method must be one of {PRUNE_METHODS}, got {method!r}")
        check_file_sections(file_cfg, SECTIONS)
        data_cfg = build_config(DataConfig, args, file_cfg, section="data")
        train_cfg = build_config(
            TrainConfig, args, file_cfg, section="train", defaults=method_train_defaults(method)
        )
        stages = build_config(
            StageConfig, args, file_cfg, section="stages", defaults=method_stage_defaults(method)
        )
        pruning = spd_pruning_config(
            build_config(
                PruningConfig,
                args,
                file_cfg,
                section="pruning",
                defaults=method_pruning_defaults(method),
                overrides={"method": "none"},
            ),
            method,
        )
        distill = build_config(
            DistillConfig,
            args,
            file_cfg,
            section="distill",
            defaults=method_distill_defaults(method, stages.kd),
        )
        graft = build_config(GraftConfig, args, file_cfg, section="graft", prefix="graft_")
        check_block_fits(stages.teacher or stages.model, pruning.block)
    except (ValueError, TypeError, OSError) as e:  # OSError: files, and transformers' loaders
        return fail(str(e))
    info = init_distributed(train_cfg.device)
    try:
        configure_torch(train_cfg)
        tokenizer = load_tokenizer(stages.teacher or stages.model)
        task, enc = prepare_data(data_cfg, tokenizer)
        teacher = None
        if stages.teacher is not None:
            teacher, _ = load_pretrained(
                stages.teacher, task.num_labels, "regression" if task.regression else None
            )
            if teacher.config.num_labels != task.num_labels:
                raise ValueError(
                    f"teacher {stages.teacher} has {teacher.config.num_labels} labels, "
                    f"the task has {task.num_labels}"
                )
            check_label_mapping(teacher.config, task, f"teacher {stages.teacher}")
            teacher.eval()
        phases = prune_phases(method, stages, pruning, distill, graft, task.num_labels, task.regression)
        fp = fingerprint(
            "prune",
            method=method,
            data=data_cfg,
            train=train_cfg,
            stages=stages,
            pruning=pruning,
            distill=distill,
            graft=graft if method == "spd" else None,
            world_size=info.world_size,
        )
        trainer = Trainer(train_cfg, info, task, enc, tokenizer, fp)
        with Timer() as t:
            model, teacher = trainer.run(phases, teacher)
        results = trainer.finish(
            model,
            teacher,
            {
                "command": "prune",
                "method": method,
                "kd": bool(distill.needs_teacher),
                "granularity": pruning.granularity,
                "target_sparsity": pruning.sparsity,
                "scope": pruning.scope,
                "seed": train_cfg.seed,
                "model": stages.model,
                "teacher_path": stages.teacher,
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
