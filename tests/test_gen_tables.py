"""scripts/gen_tables.py: the committed README/docs tables are what the committed CSVs give, and
a change on either side is caught (no benchmark runs)."""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gen_tables  # noqa: E402


@pytest.mark.parametrize("page", gen_tables.PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_committed_markdown_is_what_the_script_writes(page):
    text = page.read_text()
    assert gen_tables.render(text) == text, (
        f"{page.relative_to(ROOT)} differs from its CSVs: run `python scripts/gen_tables.py`"
    )


def test_every_table_is_on_a_page_and_names_its_csv():
    names = [n for p in gen_tables.PAGES for n in gen_tables.marked(p.read_text())]
    assert set(names) == set(gen_tables.TABLES), set(gen_tables.TABLES) ^ set(names)
    for name, fn in gen_tables.TABLES.items():
        out = fn()
        assert "benchmarks/results/" in out or "`benchmarks/results/" in out, name


def test_a_changed_csv_makes_the_page_stale(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(gen_tables.RESULTS, results)
    csv_path = results / "model_cpu.csv"
    lines = csv_path.read_text().splitlines(True)
    head = lines[0].split(",")
    i = head.index("speedup_vs_best_dense")
    cells = lines[1].split(",")
    assert cells[1] == "spd_kernels/bsr32" and float(cells[i]) > 1
    cells[i] = "9.99"  # a figure that no longer matches the page
    lines[1] = ",".join(cells)
    csv_path.write_text("".join(lines))
    readme = (ROOT / "README.md").read_text()
    monkeypatch.setattr(gen_tables, "RESULTS", results)
    new = gen_tables.render(readme)
    assert new != readme and "9.99×" in new


def test_a_hand_edited_table_is_overwritten():
    text = "<!-- table:call_overhead -->\n| path | µs |\n| kernel | 1.0 |\n<!-- /table -->\n"
    out = gen_tables.render(text)
    assert "| kernel | 1.0 |" not in out and "call_overhead_cpu.csv" in out
    assert gen_tables.render(out) == out  # stable


def test_unknown_table_and_missing_csv(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        gen_tables.render("<!-- table:nope -->\n<!-- /table -->\n")
    monkeypatch.setattr(gen_tables, "RESULTS", tmp_path)
    out = gen_tables.table_profile_example()
    assert out.startswith("Not measured yet") and "spd profile --shapes" in out


def test_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    page = tmp_path / "page.md"
    page.write_text("<!-- table:call_overhead -->\nold\n<!-- /table -->\n")
    monkeypatch.setattr(gen_tables, "PAGES", [page])
    monkeypatch.setattr(gen_tables, "ROOT", tmp_path)
    assert gen_tables.main(["--check"]) == 1
    assert "-old" in capsys.readouterr().out
    assert gen_tables.main([]) == 0 and gen_tables.main(["--check"]) == 0
