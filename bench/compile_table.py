"""The compile-for-Hopper table (#20): every kernel variant the dispatchers choose at real sizes,
compiled for sm_90 on this machine (no GPU needed), with registers, shared memory, spills,
tensor-core instructions and 64-bit strides. See blockprune/kernels/hopper.py.

    .venv/bin/python bench/compile_table.py --out bench/results/compile_hopper
"""

from __future__ import annotations

import argparse
import json
import re
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
             "The heads are compiled as a launch specialises them (`hopper.jit_specialization`: unit inner strides",
             "constant, pointers, hidden size and row strides divisible by 16); without that the loads are neither",
             "vectorised nor pipelined (one shared buffer, 239 registers where three stages were asked, until #33).",
             "Buffers: the software pipeline's shared-memory ring per operand (TTGIR); a wgmma dot reads both",
             "operands from it (num_stages buffers), mma.sync and FMA dots hold one stage in registers",
             "(num_stages - 1); shared memory is then buffers x (position tile + weight tile) bytes + 1024 static.",
             "Weight reads: LM-head weight bytes read per call / weight bytes = position programs = cdiv(positions,",
             "BLOCK_P).", "",
             ("| kernel | asked for (first of identical variants) | tiles | warps/stages | registers | shared B "
              "| buffers | weight reads | spills | tensor cores | 64-bit strides | problems |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r["constexprs"]
        tiles = "x".join(str(c[k]) for k in ("BLOCK_P", "BLOCK_V", "BLOCK_D", "BLOCK_M") if k in c)
        flags = ",".join(k.replace("HAS_", "").lower() for k in ("HAS_BIAS", "HAS_SOFTCAP", "HAS_INDEX") if c.get(k))
        opts = f"{r['options'].get('num_warps', '')}/{r['options'].get('num_stages', '')}"
        positions = re.search(r"positions (\d+)", r["config"])
        reads = -(-int(positions.group(1)) // c["BLOCK_P"]) if "BLOCK_P" in c and positions else "-"
        lines.append(f"| {r['kernel']}{' (' + flags + ')' if flags else ''} | {r['config']} | {tiles} | {opts} "
                     f"| {r['registers']} | {r['shared']} | {r.get('buffers', '-')} | {reads} | {r['local']}/{r['stack']} "
                     f"| {', '.join(r['tensor_core']) or '-'} | {', '.join(r['wide_strides'])} "
                     f"| {'; '.join(r['problems']) or 'none'} |")
    bad = sum(1 for r in rows if r["problems"])
    lines += ["", f"{len(rows)} variants, {bad} with problems."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))


if __name__ == "__main__":
    main()
