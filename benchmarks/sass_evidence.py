"""Compile evidence for the csrc kernels without a GPU: ptxas resources and the SASS of the hot loops.

    python -m benchmarks.sass_evidence [--archs 90a,80] [--out benchmarks/results/sm90a-compile]

For every csrc/sparse24/*.cu and arch: `nvcc -O3 -gencode arch=compute_X,code=sm_X -Xptxas -v -cubin`
(registers, stack, spills per kernel) and `cuobjdump -sass`. For each sp24_decode instance it finds the
consumer loop (the smallest loop holding the HMMA.SP) and the producer loop (the smallest holding the
LDGSTS and the cp.async mbarrier arrive) and walks their hot path: forward branches that skip the tile
epilogue (stores, memory barriers, flag spins) are taken, branches out of the loop (mbarrier retry
blocks) and inner back-edges are not; the x-row loop is unrolled and its early exits not taken, so the count is
for the instance's largest M (8 NT). From those counts:
warp-instructions per KB of weight = (consumer path x consumer warps + producer path x 2 producer warps)
/ stage weight KB.
It checks: no local memory (LDL/STL) and no spills, no BAR.SYNC inside either loop, HMMA.SP present,
16-byte LDGSTS.E.BYPASS.128. Writes sp24_kernels.json and sp24_kernels.txt (device "none (nvcc compile only)").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc" / "sparse24"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sm90a-compile"
DECODE_RE = re.compile(r"sp24_decode_kernelI(6__half|13__nv_bfloat16)Li(\d+)ELi(\d+)E")
RARE_PATH = ("STG", "MEMBAR", "LDG.E.STRONG", "NANOSLEEP", "ERRBAR")
CHUNK_K = 128
PRODUCER_WARPS = 2  # kProducerWarps in sp24_decode.cu (checked against the source)


def find_cuobjdump() -> str:
    found = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise FileNotFoundError("cuobjdump not found: install the CUDA toolkit, or Triton (it bundles one), or set CUOBJDUMP")


def parse_ptxas(text: str) -> dict[str, dict]:
    """Mangled kernel name -> registers, stack bytes, spill store/load bytes, barriers (from -Xptxas -v)."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            current["barriers"] = int(b.group(1)) if b else 0
    return out


def parse_sass(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """Mangled function name -> [(address, opcode, full text)]."""
    functions, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;", line)
        if m and current is not None:
            body = m.group(2).strip()
            opcode = re.sub(r"^@!?U?P\w+\s+", "", body).split()[0] if body else ""
            current.append((int(m.group(1), 16), opcode, body))
    return functions


def _branch_target(body: str) -> int | None:
    m = re.search(r"\b(0x[0-9a-f]+)\s*$", body)
    return int(m.group(1), 16) if m else None


def loops(ins: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """(head, back-edge address) of every backward branch, except the unconditional ones past the last EXIT
    (those return from out-of-line mbarrier retry blocks into the middle of a loop)."""
    last_exit = max((a for a, op, _ in ins if op == "EXIT"), default=0)
    found = []
    for addr, op, body in ins:
        if op == "BRA" and (body.startswith("@") or addr < last_exit):
            target = _branch_target(body)
            if target is not None and target < addr:
                found.append((target, addr))
    return found


def smallest_loop_with(ins, *needles: str) -> tuple[int, int] | None:
    best = None
    for head, back in loops(ins):
        ops = [op for a, op, _ in ins if head <= a <= back]
        if all(any(op.startswith(n) for op in ops) for n in needles):
            if best is None or back - head < best[1] - best[0]:
                best = (head, back)
    return best


def hot_path(ins, loop: tuple[int, int]) -> list[tuple[int, str, str]]:
    """The instructions of one trip around `loop` on its common path (see the module docstring)."""
    head, back = loop
    index = {a: i for i, (a, _, _) in enumerate(ins)}
    path, i, guard = [], index[head], 0
    while guard < 10_000:
        guard += 1
        addr, op, body = ins[i]
        path.append(ins[i])
        if addr == back:
            return path
        if op in ("BRA",):
            target = _branch_target(body)
            conditional = body.startswith("@")
            if target is not None and head <= target <= back and target > addr:
                skipped = [o for a, o, _ in ins if addr < a < target]
                if not conditional or any(o.startswith(r) for o in skipped for r in RARE_PATH):
                    i = index[target]
                    continue
            elif target is not None and not conditional and not (head <= target <= back):
                raise ValueError(f"unconditional branch out of the loop at {addr:#x}")
        i += 1
    raise ValueError("hot-path walk did not return to the loop's back-edge")


def summarize(path) -> dict:
    ops = Counter(op for _, op, _ in path)
    return {"instructions": len(path), "hmma_sp": sum(v for k, v in ops.items() if k.startswith("HMMA.SP")),
            "ldsm": sum(v for k, v in ops.items() if k.startswith("LDSM")),
            "lds": ops.get("LDS", 0), "ldgsts_128": sum(v for k, v in ops.items() if k.startswith("LDGSTS") and ".128" in k),
            "ldgsts_other": sum(v for k, v in ops.items() if k.startswith("LDGSTS") and ".128" not in k),
            "bar_sync": sum(v for k, v in ops.items() if k.startswith("BAR")),
            "mbarrier": sum(v for k, v in ops.items() if k.startswith("SYNCS") or k.startswith("ARRIVES")),
            "opcodes": dict(ops.most_common())}


def analyze_decode(name: str, ins, ptxas: dict) -> dict:
    m = DECODE_RE.search(name)
    dtype = "bfloat16" if "bfloat16" in m.group(1) else "float16"
    nt, cw = int(m.group(2)), int(m.group(3))
    rows = 32 * cw
    entry = {"kernel": f"sp24_decode<{dtype}, NT={nt}, rows={rows}>", "dtype": dtype, "n8_tiles": nt, "rows": rows,
             "consumer_warps": cw, "max_tokens": 8 * nt, **ptxas}
    all_ops = Counter(op for _, op, _ in ins)
    entry["local_memory_ops"] = sum(v for k, v in all_ops.items() if k.startswith(("LDL", "STL")))
    entry["bar_sync_in_kernel"] = sum(v for k, v in all_ops.items() if k.startswith("BAR"))
    consumer = smallest_loop_with(ins, "HMMA.SP")
    producer = smallest_loop_with(ins, "LDGSTS", "ARRIVES")
    if consumer is None or producer is None:
        entry["error"] = "could not find the consumer or producer loop"
        return entry
    c_path, p_path = hot_path(ins, consumer), hot_path(ins, producer)
    entry["consumer_loop"] = {"head": hex(consumer[0]), "back_edge": hex(consumer[1]), **summarize(c_path)}
    entry["producer_loop"] = {"head": hex(producer[0]), "back_edge": hex(producer[1]), **summarize(p_path)}
    stage_weight_kb = rows * CHUNK_K * 9 / 8 / 1024  # values + meta of one stage
    per_stage = entry["consumer_loop"]["instructions"] * cw + entry["producer_loop"]["instructions"] * PRODUCER_WARPS
    entry["stage_weight_kb"] = stage_weight_kb
    entry["warp_instructions_per_stage"] = per_stage
    entry["warp_instructions_per_kb"] = round(per_stage / stage_weight_kb, 2)
    entry["checks"] = {
        "no_spills": ptxas.get("spill_stores", 1) == 0 and ptxas.get("spill_loads", 1) == 0 and entry["local_memory_ops"] == 0,
        "no_bar_sync_in_loops": entry["consumer_loop"]["bar_sync"] == 0 and entry["producer_loop"]["bar_sync"] == 0,
        "hmma_sp_in_consumer_loop": entry["consumer_loop"]["hmma_sp"] == 8 * nt,
        "16_byte_cp_async_only": entry["producer_loop"]["ldgsts_128"] > 0 and entry["producer_loop"]["ldgsts_other"] == 0,
    }
    entry["_path"] = {"consumer": c_path, "producer": p_path}
    return entry


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="90a,80")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--listing", default="bfloat16:1:4:90a", help="dtype:NT:consumer_warps:arch whose hot paths go in the text")
    args = p.parse_args(argv)
    if f"kProducerWarps = {PRODUCER_WARPS};" not in (CSRC / "sp24_decode.cu").read_text():
        print("sass_evidence: PRODUCER_WARPS no longer matches kProducerWarps in sp24_decode.cu", file=sys.stderr)
        return 2
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("sass_evidence: nvcc not found (needs the CUDA toolkit; no GPU needed)", file=sys.stderr)
        return 2
    cuobjdump = find_cuobjdump()
    version = " ".join(line.strip() for line in run([nvcc, "--version"]).stdout.strip().splitlines()[-2:])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"device": "none (nvcc compile only)", "nvcc": version, "cuobjdump": cuobjdump,
              "command": "python -m benchmarks.sass_evidence " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
              "compile": "nvcc -std=c++17 -O3 -gencode arch=compute_{arch},code=sm_{arch} -Xptxas -v -cubin csrc/sparse24/<file>.cu",
              "files": {}, "decode": []}
    listing = []
    want = args.listing.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
            for src in sorted(CSRC.glob("*.cu")):
                cubin = Path(tmp) / f"{src.stem}_{arch}.cubin"
                cmd = [nvcc, "-std=c++17", "-O3", "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
                       "-cubin", "-o", str(cubin), str(src)]
                done = run(cmd)
                key = f"{src.name}@sm_{arch}"
                if done.returncode != 0:
                    report["files"][key] = {"error": done.stderr[-3000:]}
                    continue
                ptxas = parse_ptxas(done.stderr)
                sass = parse_sass(run([cuobjdump, "-sass", str(cubin)]).stdout)
                report["files"][key] = {"kernels": len(ptxas),
                                        "max_registers": max((v.get("registers", 0) for v in ptxas.values()), default=0),
                                        "spill_bytes": sum(v.get("spill_stores", 0) + v.get("spill_loads", 0) for v in ptxas.values()),
                                        "stack_bytes": max((v.get("stack", 0) for v in ptxas.values()), default=0)}
                for name, ins in sass.items():
                    if DECODE_RE.search(name):
                        entry = analyze_decode(name, ins, ptxas.get(name, {}))
                        entry["arch"] = f"sm_{arch}"
                        paths = entry.pop("_path", None)
                        report["decode"].append(entry)
                        if paths and [entry["dtype"], str(entry["n8_tiles"]), str(entry["consumer_warps"]), arch] == want:
                            for role in ("consumer", "producer"):
                                listing.append(f"\n--- {entry['kernel']} sm_{arch}: {role} hot path ({len(paths[role])} instructions)")
                                listing += [f"  {a:#06x}  {body}" for a, _, body in paths[role]]
    report["decode"].sort(key=lambda e: (e["arch"], e["dtype"], e["n8_tiles"], e["rows"]))
    report["all_checks_pass"] = all(all(e.get("checks", {"x": False}).values()) for e in report["decode"]) and \
        all(f.get("spill_bytes", 1) == 0 for f in report["files"].values())
    (out_dir / "sp24_kernels.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"device: {report['device']}", f"nvcc: {version}", f"command: {report['command']}",
             f"compile: {report['compile']}", "", "files (all kernels of the file):"]
    for key, f in report["files"].items():
        lines.append(f"  {key:34s} " + (f"kernels {f['kernels']}, max registers {f['max_registers']}, spill bytes "
                                         f"{f['spill_bytes']}, stack {f['stack_bytes']}" if "error" not in f else "COMPILE ERROR"))
    lines += ["", "sp24_decode instances: registers | consumer path (HMMA.SP, LDSM, LDS) | producer path (LDGSTS.128; "
              "the x-row loop counted for the instance's largest M) | warp-instructions per KB of weight | checks"]
    for e in report["decode"]:
        if "error" in e:
            lines.append(f"  {e['arch']} {e['kernel']}: {e['error']}")
            continue
        c, pr = e["consumer_loop"], e["producer_loop"]
        lines.append(f"  {e['arch']:6s} {e['kernel']:40s} {e.get('registers', '?'):>3} regs | {c['instructions']:3d} "
                     f"({c['hmma_sp']}, {c['ldsm']}, {c['lds']}) x {e['consumer_warps']} warps | {pr['instructions']:4d} "
                     f"({pr['ldgsts_128']}) x {PRODUCER_WARPS} | {e['warp_instructions_per_kb']:6.1f} | "
                     + ("ok" if all(e["checks"].values()) else "FAIL " + ",".join(k for k, v in e["checks"].items() if not v)))
    lines.append(f"\nall checks pass: {report['all_checks_pass']}")
    (out_dir / "sp24_kernels.txt").write_text("\n".join(lines + listing) + "\n")
    print("\n".join(lines))
    return 0 if report["all_checks_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
