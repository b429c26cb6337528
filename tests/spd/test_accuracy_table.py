"""benchmarks/accuracy/table.py: the README accuracy table from a grid of run folders."""

import csv
import json
import runpy
import sys

import pytest

SCRIPT = "benchmarks/accuracy/table.py"


def _run(tmp_path, name, method, gran, seed, test, val=0.5, t=10.0):
    d = tmp_path / name
    d.mkdir()
    best = {
        "sparsity": 0.0 if method == "dense" else 0.9,
        "test": {"accuracy": test},
        "validation": {"accuracy": val},
    }
    res = {"method": method, "granularity": gran, "seed": seed, "best": best, "train_time_s": t}
    (d / "results.json").write_text(json.dumps(res))


def test_table_means_seeds_and_percent_of_teacher(tmp_path, capsys, monkeypatch):
    _run(tmp_path, "teacher", "dense", None, 1, 0.80)
    _run(tmp_path, "spd-element-s1", "spd", "element", 1, 0.70, t=100)
    _run(tmp_path, "spd-element-s2", "spd", "element", 2, 0.76, t=300)
    _run(tmp_path, "magnitude-block32-s1", "magnitude", "block32", 1, 0.60)
    out_csv = tmp_path / "acc.csv"
    monkeypatch.setattr(sys, "argv", [SCRIPT, str(tmp_path), "--csv", str(out_csv)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(SCRIPT, run_name="__main__")
    assert e.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2].startswith("| teacher (dense) | - | 0.00 | 0.8000 (0.8000) | 100.0 |")
    spd = next(line for line in lines if line.startswith("| spd |"))
    assert "| 0.7300 (0.7000, 0.7600) | 91.2 |" in spd and "| 200 s |" in spd  # mean of the seeds
    # block rows come after element rows
    assert lines.index(spd) < lines.index(next(line for line in lines if "block32" in line))
    with open(out_csv) as f:
        assert len(list(csv.DictReader(f))) == 4


def test_table_refuses_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [SCRIPT, str(tmp_path)])
    with pytest.raises(SystemExit, match="no \\*/results.json"):
        runpy.run_path(SCRIPT, run_name="__main__")


def test_grid_in_parts_appends_to_the_csv_and_prints_from_it(tmp_path, capsys, monkeypatch):
    part1, part2 = tmp_path / "a", tmp_path / "b"
    part1.mkdir(), part2.mkdir()
    _run(part1, "teacher", "dense", None, 1, 0.80)
    _run(part1, "spd-element-s1", "spd", "element", 1, 0.70)
    _run(part2, "spd-element-s2", "spd", "element", 2, 0.76)
    _run(part2, "spd-element-s1", "spd", "element", 1, 0.72)  # a rerun replaces its row
    out_csv = tmp_path / "acc.csv"
    for part in (part1, part2):
        monkeypatch.setattr(sys, "argv", [SCRIPT, str(part), "--csv", str(out_csv), "--append"])
        with pytest.raises(SystemExit):
            runpy.run_path(SCRIPT, run_name="__main__")
    with open(out_csv) as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"teacher", "spd-element-s1", "spd-element-s2"}
    assert float(rows["spd-element-s1"]["test"]) == 0.72
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [SCRIPT, "--from-csv", str(out_csv)])
    with pytest.raises(SystemExit):
        runpy.run_path(SCRIPT, run_name="__main__")
    assert "| 0.7400 (0.7200, 0.7600) | 92.5 |" in capsys.readouterr().out
