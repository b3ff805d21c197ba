"""bench/gpu.sh --smoke on CPU (#20): the GPU run's script works end to end before it meets a card,
returns at most 6 files, and answers the card's question (engine vs naive, with its agreement
check) before anything else."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu.log", "gpu_bench.json", "summary.md", "tests.xml", "vlm.json"], files
    data = json.loads((out / "gpu_bench.json").read_text())
    sections = list(data["sections"])
    assert sections[:2] == ["engine", "fp32_exact"], sections  # the card's question first
    assert {"heads", "rows", "generate"} <= set(sections)
    assert all(r["agrees"] for r in data["sections"]["generate"])
    assert all(r["agrees"] for r in data["sections"]["engine"] if "agrees" in r)
    assert all(r["nan_outputs"] == 0 for r in data["sections"]["heads"] if "nan_outputs" in r)
    assert "Batched engine vs one pruned forward per candidate" in (out / "summary.md").read_text()
    assert 'failures="0"' in (out / "tests.xml").read_text() and 'errors="0"' in (out / "tests.xml").read_text()
    vlm = json.loads((out / "vlm.json").read_text())  # the replaced system's experiment, on a tiny VLM here
    assert vlm["answers_compared"] and vlm["answers_same"] == vlm["answers_compared"]
    assert vlm["search"]["candidates"] > 1 and vlm["replaced_method"]["pairs_timed"] > 0
