"""Every csrc/**/*.cu compiles for sm_80 and sm_90a with nvcc, and no kernel spills registers.

Runs without a GPU (nvcc only, `-c`, the extension's own flags from setup.py), one test per (file, arch).
ptxas's `-v` report gives each kernel's spill stores/loads; a spill in these memory-bound kernels costs
local-memory traffic in the hot loop, so any spill fails the test with the kernel's (demangled) name.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))
ARCHS = ("80", "90a")
NVCC = shutil.which("nvcc")


def parse_spills(ptxas: str) -> dict[str, tuple[int, int]]:
    """Mangled kernel name -> (spill store bytes, spill load bytes), from `-Xptxas -v` output."""
    spills, current = {}, None
    for line in ptxas.splitlines():
        entry = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line)
        if entry:
            current = entry.group(1)
        counts = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if counts and current:
            spills[current] = (int(counts.group(1)), int(counts.group(2)))
    return spills


def demangle(names: list[str]) -> list[str]:
    cufilt = shutil.which("cu++filt") or (os.path.join(os.path.dirname(NVCC), "cu++filt") if NVCC else None)
    if not cufilt or not os.path.exists(cufilt):
        return names
    done = subprocess.run([cufilt], input="\n".join(names), capture_output=True, text=True)
    return done.stdout.split("\n")[:len(names)] if done.returncode == 0 else names


def test_parse_spills_reads_ptxas_report():
    report = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90a'
ptxas info    : Function properties for _Z3fooPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers
ptxas info    : Function properties for _Z3barPf
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
"""
    assert parse_spills(report) == {"_Z3fooPf": (0, 0), "_Z3barPf": (8, 12)}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: install the CUDA toolkit to compile csrc")
@pytest.mark.skipif(not SOURCES, reason="no csrc/**/*.cu files")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_cu_file_compiles_without_spills(source, arch, tmp_path):
    cmd = [NVCC, "-O3", "-std=c++17", "--use_fast_math", "-gencode", f"arch=compute_{arch},code=sm_{arch}",
           "-Xptxas", "-v", "-I", os.path.join(ROOT, "csrc"), "-I", os.path.dirname(os.path.join(ROOT, source)),
           "-c", os.path.join(ROOT, source), "-o", str(tmp_path / "out.o")]
    try:
        from torch.utils.cpp_extension import include_paths  # only for sources that include torch headers

        for path in include_paths():
            cmd[1:1] = ["-I", path]
    except ImportError:
        pass
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{source} does not compile for sm_{arch}:\n{done.stderr[-4000:]}"
    spills = parse_spills(done.stderr + done.stdout)
    assert spills or "__global__" not in open(os.path.join(ROOT, source)).read(), \
        f"no ptxas report for {source} (sm_{arch}):\n{done.stderr[-2000:]}"
    spilling = [name for name, (stores, loads) in spills.items() if stores or loads]
    assert not spilling, f"{source} sm_{arch}: kernels spill registers:\n" + "\n".join(
        f"  {pretty}: {spills[name][0]} B spill stores, {spills[name][1]} B spill loads"
        for name, pretty in zip(spilling, demangle(spilling)))
