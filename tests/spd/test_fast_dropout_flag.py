"""Training's dropout switch: on by default, --no-fast-dropout keeps torch's dropout."""

from torch import nn

from spd.cli import build_parser
from spd.trainer import TrainConfig
from spd_kernels.nn.dropout import FastDropout, use_fast_dropout


def test_flag_defaults_on_and_can_be_turned_off():
    assert TrainConfig().fast_dropout is True
    parser = build_parser("prune")
    args = parser.parse_args(["prune", "--no-fast-dropout"])
    assert args.fast_dropout is False
    assert "fast_dropout" not in vars(parser.parse_args(["prune"]))  # unset: file or default decides


def test_swap_follows_the_flag_on_a_bert_like_model():
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Dropout(0.1))
    model = nn.ModuleDict({"emb": emb, "head": nn.Dropout(0.2)})
    assert use_fast_dropout(model, TrainConfig().fast_dropout) == 2
    assert all(type(m) is FastDropout for m in (model["emb"][1], model["head"]))
    assert use_fast_dropout(model, TrainConfig(fast_dropout=False).fast_dropout) == 2
    assert not any(isinstance(m, FastDropout) for m in model.modules())
