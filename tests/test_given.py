"""--method given: exactly the named sets (and dense) are scored on every task, with the same report."""

import json

import pytest

from blockprune import cli, search
from blockprune.runs.store import RESULTS_FILE


def args(tiny_dir, jsonl_tasks, out, *extra):
    return ["search", "--model", str(tiny_dir), "--task", f"jsonl:{jsonl_tasks / 'mc.jsonl'}",
            "--task", f"jsonl:{jsonl_tasks / 'ppl.jsonl'}", "--ppl-window", "16", "--out", str(out), "--no-progress",
            "--device", "cpu", "--no-latency", "--method", "given", *extra]


def test_parse_sets_by_hand():
    assert search.parse_sets("17,18,19;4,13") == [(17, 18, 19), (4, 13)]
    assert search.parse_sets("3 1\n# a comment\n\n2,0 # the last-25% rule\n1,3") == [(1, 3), (0, 2)]
    for bad, needle in [("1,x", "not a comma-separated"), ("1,1", "twice"), (" ; ", "no set given")]:
        with pytest.raises(search.SearchError, match=needle):
            search.parse_sets(bad)


def test_given_sets_are_scored_exactly_and_reported(tiny_dir, jsonl_tasks, tmp_path):
    out = tmp_path / "run"
    assert cli.main(args(tiny_dir, jsonl_tasks, out, "--sets", "3,4,5;1,2;0")) == 0
    recs = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    scored = {tuple(r["removed"]) for r in recs if r.get("type") is None}
    assert scored == {(), (3, 4, 5), (1, 2), (0,)}  # nothing else, no racing parts
    assert not any(r.get("type") == "part" for r in recs)
    analysis = json.loads((out / "cross_dataset_analysis.json").read_text())
    assert sorted(tuple(c["removed"]) for c in analysis["candidates"]) == [(0,), (1, 2), (3, 4, 5)]
    assert "--sets '0;1,2;3,4,5'" in (out / "REPORT.md").read_text()
    # another run's recommendations as the sets file: its sets, scored the same way
    other = tmp_path / "again"
    assert cli.main(args(tiny_dir, jsonl_tasks, other, "--sets-file", str(out / "pruning_recommendations.json"))) == 0
    again = json.loads((other / "cross_dataset_analysis.json").read_text())
    mine = {tuple(c["removed"]): c["mean_drop"] for c in analysis["candidates"]}
    for c in again["candidates"]:
        assert c["mean_drop"] == pytest.approx(mine[tuple(c["removed"])], abs=1e-12)


@pytest.mark.parametrize("extra, needle", [
    ([], "--method given needs --sets"),
    (["--sets", "1,9"], "out of range 0..5"),
    (["--sets", "0,1,2,3,4,5"], "keeps 0 of 6 blocks"),
    (["--sets", "1,2", "--protect", "2"], "removes protected block"),
    (["--sets", "1;x"], "not a comma-separated list"),
])
def test_bad_given_sets_are_one_line(tiny_dir, jsonl_tasks, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    assert cli.main(args(tiny_dir, jsonl_tasks, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockprune: error:") and needle in err and "\n" not in err
    assert not out.exists()


def test_sets_without_given_are_refused(tiny_dir, jsonl_tasks, tmp_path, capsys):
    argv = args(tiny_dir, jsonl_tasks, tmp_path / "run", "--sets", "1")
    argv[argv.index("given")] = "beam"
    assert cli.main(argv) == 2
    assert "scored by --method given" in capsys.readouterr().err
