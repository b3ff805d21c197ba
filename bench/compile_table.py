"""The compile-for-Hopper table (#20): every kernel variant the dispatchers choose at real sizes,
compiled for sm_90 on this machine (no GPU needed), with registers, shared memory, spills,
tensor-core instructions and 64-bit strides. See blockprune/kernels/hopper.py.

    .venv/bin/python bench/compile_table.py --out bench/results/compile_hopper
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blockprune.kernels import hopper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/compile_hopper")
    args = ap.parse_args()
    rows = hopper.compile_all()
    for row in rows:
        row["problems"] = hopper.problems(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Every kernel variant compiled for Hopper (sm_90), on a CPU-only machine", "",
             "`bench/compile_table.py` (Triton's own compiler and cuobjdump; no GPU). Shared memory is static +",
             f"dynamic bytes per block (limit {hopper.SHARED_LIMIT}); spills are cuobjdump's LOCAL and STACK; tensor",
             "cores: wgmma/mma instructions in the PTX; 64-bit: the row strides widened before they multiply an index.",
             "", "| kernel | asked for (first of identical variants) | tiles | warps/stages | registers | shared B "
             "| spills | tensor cores | 64-bit strides | problems |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r["constexprs"]
        tiles = "x".join(str(c[k]) for k in ("BLOCK_P", "BLOCK_V", "BLOCK_D", "BLOCK_M") if k in c)
        flags = ",".join(k.replace("HAS_", "").lower() for k in ("HAS_BIAS", "HAS_SOFTCAP", "HAS_INDEX") if c.get(k))
        opts = f"{r['options'].get('num_warps', '')}/{r['options'].get('num_stages', '')}"
        lines.append(f"| {r['kernel']}{' (' + flags + ')' if flags else ''} | {r['config']} | {tiles} | {opts} "
                     f"| {r['registers']} | {r['shared']} | {r['local']}/{r['stack']} | {', '.join(r['tensor_core']) or '-'} "
                     f"| {', '.join(r['wide_strides'])} | {'; '.join(r['problems']) or 'none'} |")
    bad = sum(1 for r in rows if r["problems"])
    lines += ["", f"{len(rows)} variants, {bad} with problems."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))


if __name__ == "__main__":
    main()
