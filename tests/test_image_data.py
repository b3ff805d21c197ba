"""Image data (blockprune.data.easy_vqa, blockprune.data.images): the easy-VQA test split out of the
`easy-vqa` wheel (extracted once, re-extracted when a cached PNG is damaged), `open_image` refusing
every bad image with one line, `image_key` as the picture's identity, and `read_image_rows` checking
vqa and caption JSONL rows (FILE:LINE errors, paths relative to the JSONL's folder)."""

import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from blockprune.data import cache, easy_vqa, images
from blockprune.data.cache import DataError
from blockprune.data.easy_vqa import easy_vqa_rows, easy_vqa_split
from blockprune.data.images import image_key, open_image, read_image_rows

# --------------------------------------------------------------------------- easy-vqa


@pytest.fixture(scope="module")
def vqa_cache(tmp_path_factory):
    """A cache of its own holding the easy-vqa wheel: a copy of the real cache's, which is fetched there
    (pip download, 3 MB) only if it is not there yet; the extraction happens in the test's cache."""
    with pytest.MonkeyPatch.context() as mp:
        wheel = cache.cached_archive("easy-vqa")
        if wheel is None:
            try:
                wheel = cache.fetch("easy-vqa", quiet=True)
            except DataError as exc:
                pytest.fail(f"the easy-vqa wheel is not in the cache {cache.cache_dir()} and could not be "
                            f"downloaded: {exc}")
        root = tmp_path_factory.mktemp("cache")
        (root / "dl").mkdir()
        shutil.copy(wheel, root / "dl" / wheel.name)
        mp.setenv("BLOCKPRUNE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def test_rows(vqa_cache):
    return easy_vqa_rows("test")


def _wheel_questions(root: Path, split: str) -> list:
    (wheel,) = (root / "dl").glob("easy_vqa-1.0-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return json.loads(zf.read(f"easy_vqa/data/{split}/questions.json")), \
            set(zf.read("easy_vqa/data/answers.txt").decode().split())


def test_the_wheel_is_a_package_blockprune_fetch_gets(vqa_cache):
    assert cache.PACKAGES[easy_vqa.NAME] == ("easy-vqa==1.0", ("--no-deps",), "easy_vqa-1.0-*.whl")
    assert cache.fetch("easy-vqa", quiet=True).parent == vqa_cache / "dl"
    assert "easy-vqa" in cache.DEFAULT_PACKAGES


def test_the_test_split(vqa_cache, test_rows):
    questions, answers = _wheel_questions(vqa_cache, "test")
    assert len(test_rows) == len(questions) == 9673
    images_dir = vqa_cache / "easy-vqa" / "test" / "images"
    for i, (row, (question, answer, image_id)) in enumerate(zip(test_rows, questions)):
        assert row == {"id": f"test/{i}", "image": images_dir / f"{image_id}.png", "question": question,
                       "answers": [answer]}
    assert all(row["image"].is_absolute() for row in test_rows)
    assert {row["answers"][0] for row in test_rows} <= answers
    pictures = sorted({row["image"] for row in test_rows})
    assert len(pictures) == 1000
    for path in pictures:
        with Image.open(path) as im:
            assert (im.format, im.size, im.mode) == ("PNG", (64, 64), "RGB")
    assert open_image(pictures[0], "x").size == (64, 64)


def test_the_same_picture_has_one_key(test_rows):
    by_image: dict[Path, list[dict]] = {}
    for row in test_rows:
        by_image.setdefault(row["image"], []).append(row)
    shared = next(rows for rows in by_image.values() if len(rows) > 1)
    assert len({image_key(row["image"]) for row in shared}) == 1
    keys = {image_key(path) for path in by_image}
    assert len(keys) > 900  # different pictures, different keys (a few may be drawn alike)
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in keys)


def test_extracted_once_then_again_when_a_file_is_damaged(vqa_cache, test_rows):
    split = vqa_cache / "easy-vqa" / "test"
    marker = split / ".complete"
    sizes = json.loads(marker.read_text())["sizes"]
    assert len(sizes) == 1001 and "questions.json" in sizes
    before = marker.stat().st_mtime_ns, marker.stat().st_ino
    assert easy_vqa_rows("test") == test_rows
    assert (marker.stat().st_mtime_ns, marker.stat().st_ino) == before  # whole: not extracted again

    png = split / "images" / "7.png"
    whole = png.read_bytes()
    png.write_bytes(whole[: len(whole) // 2])  # truncated since
    with pytest.raises(DataError, match="truncated"):
        open_image(png, "here")
    assert easy_vqa_rows("test") == test_rows
    assert png.read_bytes() == whole
    assert open_image(png, "here").size == (64, 64)

    png.unlink()  # missing
    assert easy_vqa_split("test") == split
    assert png.read_bytes() == whole
    (split / "images" / "99999.png").write_bytes(whole)  # not in the wheel
    easy_vqa_split("test")
    assert not (split / "images" / "99999.png").exists()
    marker.write_text("{}")  # a marker without sizes
    easy_vqa_split("test")
    assert json.loads(marker.read_text())["sizes"] == sizes
    assert not list(split.rglob("*.tmp"))


def test_an_unknown_split(vqa_cache):
    with pytest.raises(DataError, match=r"^unknown easy-vqa split 'val'; known: train, test$"):
        easy_vqa_rows("val")


# --------------------------------------------------------------------------- open_image


def _png(path: Path, size=(8, 6), mode="RGB", color=(200, 30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format="PNG")
    return path


def _refused(path, pattern: str, where: str = "tasks.jsonl:3") -> str:
    with pytest.raises(DataError) as info:
        open_image(path, where)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{where}: image "), message
    assert pattern in message, message
    return message


def test_open_image_reads_any_mode_as_rgb(tmp_path):
    for mode, color in (("RGB", (1, 2, 3)), ("RGBA", (1, 2, 3, 4)), ("L", 7), ("P", 3), ("1", 1)):
        im = open_image(_png(tmp_path / f"{mode}.png", mode=mode, color=color), "w")
        assert (im.mode, im.size) == ("RGB", (8, 6))
    jpeg = tmp_path / "a.jpg"
    Image.new("RGB", (5, 4), (9, 9, 9)).save(jpeg, format="JPEG")
    assert open_image(jpeg, "w").size == (5, 4)


def test_open_image_refuses_bad_files(tmp_path, monkeypatch):
    _refused(tmp_path / "missing.png", "not found")
    (tmp_path / "folder.png").mkdir()
    _refused(tmp_path / "folder.png", "is a directory")
    (tmp_path / "x.png").write_text("this is not a picture\n")
    _refused(tmp_path / "x.png", "is not an image")
    whole = _png(tmp_path / "whole.png", size=(64, 64)).read_bytes()
    (tmp_path / "half.png").write_bytes(whole[: len(whole) // 2])
    _refused(tmp_path / "half.png", "is truncated")
    noise = tmp_path / "noise.png"
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noise)
    (tmp_path / "half.png").write_bytes(noise.read_bytes()[: noise.stat().st_size * 3 // 4])
    _refused(tmp_path / "half.png", "is truncated")
    eps = tmp_path / "a.eps"  # PIL would hand it to Ghostscript: refused as no image of FORMATS
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    _refused(eps, "is not an image")


def test_open_image_refuses_images_too_large(tmp_path, monkeypatch):
    big = _png(tmp_path / "big.png", size=(30, 20))
    monkeypatch.setattr(images, "MAX_PIXELS", 599)
    assert "30x20" in _refused(big, "too large")
    monkeypatch.setattr(images, "MAX_PIXELS", 600)
    assert open_image(big, "w").size == (30, 20)
    # PIL's own decompression-bomb guard (a warning above its limit, an error above twice it) is refused too
    monkeypatch.setattr(images, "MAX_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 600 pixels: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _refused(big, "too large")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 600 > 2 x 200: an error
    _refused(big, "too large")


def test_image_key_is_the_bytes(tmp_path):
    a = _png(tmp_path / "a.png")
    b = tmp_path / "sub" / "b.png"
    b.parent.mkdir()
    shutil.copy(a, b)
    c = _png(tmp_path / "c.png", color=(0, 0, 0))
    assert image_key(a) == image_key(b) != image_key(c)
    with pytest.raises(DataError, match=r"^cannot read image .*nope\.png"):
        image_key(tmp_path / "nope.png")


# --------------------------------------------------------------------------- read_image_rows


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_resolve_images_against_the_jsonl_folder(tmp_path, monkeypatch):
    a = _png(tmp_path / "tasks" / "img" / "a.png")
    shutil.copy(a, tmp_path / "tasks" / "img" / "same.png")
    other = _png(tmp_path / "other" / "o.png", color=(0, 0, 255))
    absolute = _png(tmp_path / "abs" / "z.png", color=(0, 255, 0))
    path = _jsonl(tmp_path / "tasks" / "vqa.jsonl", [
        {"image": "img/a.png", "question": "what color?", "answers": ["red"], "extra": 1, "id": "mine"},
        "",
        {"image": "../other/o.png", "question": "q", "answers": ["blue", "navy"], "until": "\n", "max_new_tokens": 4},
        {"image": str(absolute), "question": "q", "answers": ["green"], "until": [".", "\n"]},
        {"image": "img/same.png", "question": "again?", "answers": ["yes"]},
    ])
    monkeypatch.chdir(tmp_path / "abs")  # the working directory plays no part
    rows = read_image_rows(Path(os.path.relpath(path, tmp_path / "abs")), "vqa")
    where = os.path.relpath(path, tmp_path / "abs")
    assert [r["id"] for r in rows] == ["1", "3", "4", "5"]
    assert [r["where"] for r in rows] == [f"{where}:{n}" for n in (1, 3, 4, 5)]
    assert [r["image"] for r in rows] == [a.resolve(), other.resolve(), absolute.resolve(),
                                          (a.parent / "same.png").resolve()]
    assert all(r["image"].is_absolute() for r in rows)
    assert rows[0]["key"] == rows[3]["key"] == image_key(a) != rows[1]["key"]
    assert rows[0]["extra"] == 1 and rows[0]["question"] == "what color?" and rows[0]["answers"] == ["red"]
    assert rows[1]["until"] == ["\n"] and rows[1]["max_new_tokens"] == 4 and rows[2]["until"] == [".", "\n"]
    assert "_line" not in rows[0]

    caption = _jsonl(tmp_path / "tasks" / "cap.jsonl", [{"image": "img/a.png", "captions": ["a red square"]}])
    (row,) = read_image_rows(caption, "caption")
    assert row["captions"] == ["a red square"] and row["image"] == a.resolve() and row["id"] == "1"


def test_each_image_is_opened_once(tmp_path, monkeypatch):
    _png(tmp_path / "a.png")
    path = _jsonl(tmp_path / "v.jsonl", [{"image": "a.png", "question": "q", "answers": ["x"]}] * 5)
    opened = []
    real = images.open_image
    monkeypatch.setattr(images, "open_image", lambda p, where: opened.append(p) or real(p, where))
    assert len(read_image_rows(path, "vqa")) == 5
    assert opened == [(tmp_path / "a.png").resolve()]


GOOD = {"image": "ok.png", "question": "q?", "answers": ["a"]}
BAD_ROWS = [
    ({"question": "q?", "answers": ["a"]}, "vqa", 'a vqa row without "image"'),
    ({**GOOD, "image": 3}, "vqa", '"image" must be a non-empty string'),
    ({**GOOD, "image": ""}, "vqa", '"image" must be a non-empty string'),
    ({"image": "ok.png", "answers": ["a"]}, "vqa", 'a vqa row without "question"'),
    ({**GOOD, "question": 5}, "vqa", '"question" must be a non-empty string'),
    ({"image": "ok.png", "question": "q?"}, "vqa", 'a vqa row without "answers"'),
    ({**GOOD, "answers": []}, "vqa", '"answers" is empty'),
    ({**GOOD, "answers": "a"}, "vqa", '"answers" must be a non-empty list of strings, not str'),
    ({**GOOD, "answers": ["a", 2]}, "vqa", '"answers"[1] is not a non-empty string'),
    ({**GOOD, "answers": [""]}, "vqa", '"answers"[0] is not a non-empty string'),
    ({"image": "ok.png"}, "caption", 'a caption row without "captions"'),
    ({"image": "ok.png", "captions": []}, "caption", '"captions" is empty'),
    ({"image": "ok.png", "captions": [None]}, "caption", '"captions"[0] is not a non-empty string'),
    ({**GOOD, "max_new_tokens": 0}, "vqa", '"max_new_tokens" must be an integer from 1 to 1024'),
    ({**GOOD, "max_new_tokens": True}, "vqa", '"max_new_tokens" must be an integer'),
    ({**GOOD, "max_new_tokens": 2.5}, "vqa", '"max_new_tokens" must be an integer'),
    ({**GOOD, "until": ["\n", ""]}, "vqa", '"until" must be a stop string or a list'),
    ({**GOOD, "until": 3}, "vqa", '"until" must be a stop string or a list'),
    ({**GOOD, "image": "missing.png"}, "vqa", "missing.png not found"),
    ({**GOOD, "image": "text.png"}, "vqa", "text.png is not an image"),
    ({**GOOD, "image": "half.png"}, "vqa", "half.png is truncated"),
    ({**GOOD, "image": "big.png"}, "vqa", "big.png is too large"),
    ({**GOOD, "image": "."}, "vqa", "is a directory"),
    ({**GOOD, "image": "a\x00b.png"}, "vqa", "image 'a\\x00b.png' is not a usable path"),
    ("[1, 2]", "vqa", "a row must be a JSON object"),
    ('{"image": ', "vqa", "malformed JSON"),
    ('{"image": "\\ud800"}', "vqa", "lone UTF-16 surrogate"),
]


@pytest.mark.parametrize("row,kind,pattern", BAD_ROWS, ids=[b[2][:40] for b in BAD_ROWS])
def test_a_bad_row_is_one_line_with_file_and_line(tmp_path, monkeypatch, row, kind, pattern):
    _png(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("hello\n")
    whole = _png(tmp_path / "full.png", size=(30, 30)).read_bytes()
    (tmp_path / "half.png").write_bytes(whole[: len(whole) // 2])
    _png(tmp_path / "big.png", size=(40, 40))  # 1,600 pixels
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    good = GOOD if kind == "vqa" else {"image": "ok.png", "captions": ["c"]}
    path = _jsonl(tmp_path / "t.jsonl", [good, "", row, good])
    with pytest.raises(DataError) as info:
        read_image_rows(path, kind)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and "\n" not in message, message
    assert pattern in message, message


def test_bad_files_and_kinds(tmp_path):
    with pytest.raises(DataError, match=r"^unknown image row layout 'audio'; known: vqa, caption$"):
        read_image_rows(tmp_path / "t.jsonl", "audio")
    with pytest.raises(DataError, match=r"^jsonl task file not found: .*t\.jsonl$"):
        read_image_rows(tmp_path / "t.jsonl", "vqa")
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"^.*e\.jsonl: empty task file$"):
        read_image_rows(tmp_path / "e.jsonl", "vqa")
    (tmp_path / "b.jsonl").write_bytes(b'{"image": "a.png"}\n{"image": "\xff"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: not UTF-8 text \(byte 0xff at column 12\)$"):
        read_image_rows(tmp_path / "b.jsonl", "caption")


