"""Where a model comes from: a --model value resolved, checked and fetched, before any weights load.

* `resolve(spec)`: an embedded name (converted once from its registry GGUF into the cache), a
  local Hugging Face directory, a GGUF file, or a hub id. What cannot be a model is refused in one
  line that says where it was looked for, without waiting on a hub that cannot be reached.
* `check_device(device)`: the torch device a --device value names, refused when it is not here.
* `from_gguf(path)`: a GGUF file dequantised by transformers' GGUF reader and rebuilt as a plain
  model from its config (a GGUF-loaded model cannot be saved as it is).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..data import hub_reachable


class ModelError(Exception):
    """A model that cannot be loaded or has no block list we can drive."""


# Short names for models shipped through package registries (see blockprune.data).
EMBEDDED = {"smollm2-135m": "SmolLM2-135M-Instruct"}


def from_gguf(path: Path, dtype: torch.dtype = torch.float32, tokenizer: bool = True):
    """(model, tokenizer) from a GGUF file, dequantised by transformers' GGUF reader and rebuilt as a
    plain model from its config (a GGUF-loaded model is not serialisable as it is). `tokenizer`
    False: (model, None), without reading the file's vocabulary once more (gguf's reader takes
    seconds over a 49k-token one), for a check that needs the weights only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its own de-quantising progress bar
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name) if tokenizer else None
            gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file (struct.error, ...): one line
        text = " ".join(str(exc).split())
        what = "struct.error" if type(exc).__module__ == "struct" else ""
        detail = f"{what}: {text}" if what else (text or type(exc).__name__)
        hint = " (the file is truncated or not a whole GGUF)" if what else ""
        raise ModelError(f"cannot load GGUF {path}: {detail[:400]}{hint}") from None
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF loader marks it; a plain checkpoint has none
    try:
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict())
    except Exception as exc:  # noqa: BLE001 - metadata that describes no buildable model: one line
        text = " ".join(str(exc).split())
        raise ModelError(f"cannot load GGUF {path}: its metadata describes no model transformers can rebuild "
                         f"({type(exc).__name__}: {text[:300]})") from None
    return plain.to(dtype), tok


def _convert_smollm2(target: Path) -> None:
    """Dequantise the registry GGUF once and save it as a plain HF checkpoint in `target`."""
    from .. import data

    directory, filename = data.smollm2_gguf()
    plain, tokenizer = from_gguf(Path(directory) / filename)
    plain.config.name_or_path = EMBEDDED["smollm2-135m"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        user_modes(tmp)  # mkdtemp and transformers' safetensors writer make 0700 / 0600
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def user_modes(directory: str | Path) -> None:
    """Give a folder written through mkdtemp (0700) and its files (transformers saves
    model.safetensors 0600) the modes mkdir()/open() would have given them under the umask."""
    mask = os.umask(0)
    os.umask(mask)
    root = Path(directory)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers: blockprune prints its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # --dtype names


def check_device(device: str | torch.device | None) -> torch.device:
    """The device a --device value names, refused in one line when unknown or absent here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                             f"{'no GPU visible' if torch.version.cuda else 'a CPU-only build'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ModelError(f"--device {device}: blockprune runs on cpu, cuda or mps, not {dev.type}")
    return dev


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or spec.endswith("/") or "\\" in spec


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False




def resolve(spec: str) -> str:
    """Map a --model value to a path or hub id for from_pretrained (converting embedded ones).
    What cannot be a model is refused in one line that says where it was looked for, without
    waiting on a hub that cannot be reached."""
    if spec in EMBEDDED:
        from .. import data

        target = data.cache_dir() / "models" / spec
        killed = target.parent.is_dir() and any(target.parent.glob(".convert-*"))  # a killed conversion's folder
        if killed or not (target / "config.json").exists():
            with data.cache_lock("models"):
                data.reclaim(target.parent, ".convert-*")
                if not (target / "config.json").exists():
                    _convert_smollm2(target)
        return str(target)
    where = (f"(--model takes an embedded name: {', '.join(EMBEDDED)}; a local Hugging Face directory; a .gguf file; "
             "or a hub id)")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"cannot load model {spec!r}: the directory has no config.json, so it is not a Hugging "
                             "Face model directory")
        return str(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(path)
    if path.exists():
        raise ModelError(f"cannot load model {spec!r}: it is a file, not a .gguf; {where}")
    if _looks_like_path(spec):
        raise ModelError(f"cannot load model {spec!r}: no such directory {where}")
    if _hub_cached(spec):
        return spec
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not hub_reachable():
        raise ModelError(f"cannot load model {spec!r}: not an embedded name, not a local directory, not in the "
                         f"Hugging Face cache, and the hub is {'off (HF_HUB_OFFLINE)' if offline else 'unreachable'} "
                         f"{where}")
    return spec


# ---- what a model is, by content ---------------------------------------------------------------
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "tokenizer.model", "added_tokens.json", "chat_template.jinja")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_CHUNK = 64 * 2**10


def _sample_file(h, path: Path) -> None:
    """Size, header and a few chunks of a weight file: cheap (a few reads), and any retraining or
    re-quantisation changes them. A safetensors header (names, shapes, offsets) is read whole."""
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        head = f.read(8)
        h.update(head)
        if path.suffix == ".safetensors" and len(head) == 8:
            n = int.from_bytes(head, "little")
            h.update(f.read(min(n, 64 * 2**20)))
        for i in range(1, 9):
            f.seek(size * i // 9)
            h.update(f.read(_CHUNK))
        f.seek(max(0, size - _CHUNK))
        h.update(f.read(_CHUNK))


def content_hash(spec: str) -> str | None:
    """A short hash of what a --model value names, from its files (never from loading it): the
    config, the tokenizer's files, the weight index and each weight file's size, header and sampled
    chunks. None where the files are not on this machine (a hub id not in the cache)."""
    import hashlib

    if spec in EMBEDDED:
        from .. import data

        path = data.cache_dir() / "models" / spec
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            try:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(spec, "config.json")
            except Exception:  # noqa: BLE001 - not a repo id: nothing to hash
                hit = None
            if not isinstance(hit, str):
                return None
            path = Path(hit).parent
    h = hashlib.sha256()
    try:
        if path.is_file():
            _sample_file(h, path)
        elif path.is_dir():
            names = sorted(p.name for p in path.iterdir() if p.is_file())
            for name in names:
                if name == "config.json" or name in _TOKENIZER_FILES or name.endswith(".index.json"):
                    h.update(f"{name}\0".encode())
                    h.update((path / name).read_bytes())
            for name in names:
                if name.endswith(_WEIGHT_SUFFIXES):
                    _sample_file(h, path / name)
        else:
            return None
    except OSError:
        return None
    return h.hexdigest()[:16]


def absolute_model(spec: str) -> str:
    """A --model value as run.json keeps it: a local directory or GGUF file as an absolute path (a
    run then loads the same model from any working directory); embedded names and hub ids as given."""
    if spec in EMBEDDED:
        return spec
    path = Path(spec).expanduser()
    return os.path.abspath(path) if path.exists() else spec
