"""``spd export``: pack a pruned model for inference (SparseLinear layers on the sparse kernels)."""

from __future__ import annotations

import argparse
import json

from ..models import load_pretrained, masked_linears, save_exported
from ._common import fail

NAME = "export"
HELP = "pack a pruned model's masked layers into sparse kernels layers and save it"
DESCRIPTION = (
    "Turn the MaskedLinear layers of a pruned model (a run directory's best/ or final/ model, or a "
    "saved spd model directory) into packed SparseLinear layers that run on the sparse kernels, fuse "
    "the FFN's intermediate dense + GELU into the kernel epilogue, and save the result in the "
    "pruned-model directory (docs/formats.md: the pruned weights with zeros baked in, the masks, "
    "the tokenizer). spd_kernels.load_pruned rebuilds the packed layers, `spd eval` / "
    "`spd profile --model` read it, and transformers' from_pretrained gives the pruned dense model. "
    "Prints the file sizes."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory (uses its best/ or --which final/) or model directory")
    p.add_argument("--which", choices=("best", "final"), default="best", help="model of a run directory")
    p.add_argument("--output-dir", required=True, help="directory to write the exported model to")


def run(args) -> int:
    from .eval import _resolve

    try:
        path = _resolve(args.model, args.which)
        model, tok = load_pretrained(path, num_labels=2)
        if not masked_linears(model):
            raise ValueError(f"{path} has no pruned (MaskedLinear) layers to export")
        model.eval()
        report = save_exported(model, tok, args.output_dir)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    print(json.dumps({"output_dir": args.output_dir, "files": report.files}, indent=2, sort_keys=True))
    return 0
