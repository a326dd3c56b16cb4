"""Every Triton kernel compiles for real GPUs (sm_80 and sm_90a), without a GPU.

The interpreter runs kernels as Python and misses errors that only the compiler raises (a non-constexpr
global, a constexpr re-assigned in an unrolled loop, a layout or register limit of the backend). So this
walks the modules of triton_kernels/, finds every @triton.jit `*_kernel` (no hand-kept list), and compiles
every launch variant its module declares in `compile_variants()` (see triton_kernels/variants.py) with
`triton.compile(..., target=GPUTarget("cuda", cap, 32))`, in worker processes without TRITON_INTERPRET
(Triton ships ptxas). A kernel without declared variants fails, and so does any variant that does not
compile, with the kernel's name, the variant and Triton's message.

Kernels covered today (test_kernel_list_is_current keeps this list equal to what discovery finds):
    activation_stats: _activation_partials_kernel
    besa_masked_linear: _forward_kernel, _grad_x_kernel, _grad_bins_kernel
    dsnot: _dsnot_kernel
    dsnot_exact: _dsnot_exact_kernel
    selection: _row_select_kernel, _nm_select_kernel, _matrix_histogram_kernel, _matrix_pick_kernel,
                 _matrix_ties_kernel, _matrix_mask_kernel
    sparse24_matmul: _sparse24_matmul_kernel

SPARSEKIT_COMPILE_JOBS sets the number of worker processes (default: one per CPU core).
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import needs_triton

ARCHS = (90, 80)  # Triton compiles capability 90 as sm_90a
PACKAGE = "sparsekit.triton_kernels"


# ------------------------------------------------------------------------------------------------------
# discovery and compilation (run in a subprocess without TRITON_INTERPRET: see _run)

def discover() -> dict[str, list]:
    """module name -> the @triton.jit kernels defined in it; raises for a jit function that is neither
    a `*_kernel` nor called by another jit function of its module (an unnamed kernel would go unchecked)."""
    from triton.runtime.jit import JITFunction, KernelInterface

    package = importlib.import_module(PACKAGE)
    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        jitted = {}
        for obj in vars(module).values():
            while isinstance(obj, KernelInterface) and not isinstance(obj, JITFunction):  # autotune / heuristics
                obj = obj.fn
            if isinstance(obj, JITFunction) and obj.fn.__module__ == module.__name__:
                jitted[obj.fn.__name__] = obj
        kernels = [f for name, f in jitted.items() if name.endswith("_kernel")]
        for name, f in jitted.items():
            called = any(re.search(rf"\b{name}\s*\(", g.src) for g in jitted.values() if g is not f)
            if not name.endswith("_kernel") and not called:
                raise AssertionError(f"{module.__name__}.{name} is @triton.jit but neither named *_kernel nor called "
                                     f"by another jit function: name it *_kernel so it is compiled here")
        if kernels:
            found[info.name] = kernels
    return found


def _variants(module_name: str) -> list:
    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    declare = getattr(module, "compile_variants", None)
    return declare() if declare is not None else []


def plan() -> tuple[list, list[str]]:
    """(jobs, problems): a job is (module, variant index, capability); problems are kernels without variants
    and variants that do not name each kernel argument exactly once."""
    jobs, problems, seen = [], [], set()
    for module_name, kernels in discover().items():
        variants = _variants(module_name)
        for kernel in kernels:
            mine = [v for v in variants if v.kernel is kernel]
            if not mine:
                problems.append(f"{module_name}.{kernel.fn.__name__}: no launch variants declared; add them to "
                                f"compile_variants() in triton_kernels/{module_name}.py")
        for index, v in enumerate(variants):
            name = f"{module_name}.{v.kernel.fn.__name__}"
            given = list(v.types) + list(v.constexprs)
            missing = [a for a in v.kernel.arg_names if a not in given]
            extra = sorted({a for a in given if a not in v.kernel.arg_names} | {a for a in v.types if a in v.constexprs})
            if missing or extra:
                problems.append(f"{name} [{v.describe()}]: arguments not given {missing}, unknown or given twice {extra}")
                continue
            key = (name, json.dumps(v.types, sort_keys=True), repr(sorted(v.constexprs.items())), v.num_warps,
                   v.num_stages, v.fp_fusion, v.aligned)
            if key not in seen:
                seen.add(key)
                jobs += [(module_name, index, cap) for cap in ARCHS]
    return jobs, problems


_CACHE: dict[str, list] = {}


def compile_one(module_name: str, index: int, cap: int, want_sass: bool = False):
    """Compile one declared variant for GPUTarget("cuda", cap, 32): (label, CPU seconds, error or None, sass)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if module_name not in _CACHE:
        _CACHE[module_name] = _variants(module_name)
    v = _CACHE[module_name][index]
    fn = v.kernel
    label = f"{module_name}.{fn.fn.__name__} sm_{cap}{'a' if cap >= 90 else ''} [{v.describe()}]"
    signature = {name: v.types.get(name, "constexpr") for name in fn.arg_names}
    aligned = [a for a in fn.arg_names if v.types.get(a, "").startswith("*") or a in v.aligned]
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    cpu = _cpu_seconds()
    try:
        kernel = triton.compile(ASTSource(fn, signature, dict(v.constexprs), attrs), target=GPUTarget("cuda", cap, 32),
                                options={"num_warps": v.num_warps, "num_stages": v.num_stages,
                                         "enable_fp_fusion": v.fp_fusion})
    except Exception as exc:  # noqa: BLE001 - every compiler failure is reported with its message
        return label, _cpu_seconds() - cpu, f"{type(exc).__name__}: {str(exc)[-2500:]}", None
    sass = _sass(kernel.asm["cubin"]) if want_sass else None
    return label, _cpu_seconds() - cpu, None, sass


def _cpu_seconds() -> float:
    """CPU time of this worker and its children (ptxas runs as a subprocess): load-independent cost."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _sass(cubin: bytes) -> str:
    import tempfile

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def compile_all() -> dict:
    """Compile every planned job in worker processes; the summary printed as JSON by main()."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()
    jobs, problems = plan()
    # dsnot variants take the longest: start them first so they do not finish last
    jobs.sort(key=lambda job: (job[0] != "dsnot", job[0] != "sparse24_matmul"))
    workers = int(os.environ.get("SPARSEKIT_COMPILE_JOBS", 0)) or os.cpu_count() or 1
    failures, seconds = [], {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, (label, took, error, _) in enumerate(pool.map(compile_one, *zip(*jobs), chunksize=1), 1):
            print(f"[{done}/{len(jobs)}] {took:5.1f} CPU s {'FAILED' if error else 'ok'}  {label}", file=sys.stderr, flush=True)
            kernel = label.split(" ")[0]
            seconds[kernel] = seconds.get(kernel, 0.0) + took
            if error:
                failures.append(f"{label}: {error}")
    import triton

    return dict(triton=triton.__version__, compiled=len(jobs), workers=workers, problems=problems, failures=failures,
                wall_s=round(time.perf_counter() - start, 1), cpu_s=round(sum(seconds.values()), 1),
                cpu_s_per_kernel={k: round(s, 1) for k, s in sorted(seconds.items())})


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what == "all":
        result = compile_all()
    elif what == "list":
        result = {m: [k.fn.__name__ for k in ks] for m, ks in discover().items()}
    else:  # "sass": the 2:4 matmul checks below, on the first bf16 variant of each BLOCK_M
        result, block_ms = {}, set()
        for index, v in enumerate(_variants("sparse24_matmul")):
            if v.types["x_ptr"] != "*bf16" or v.constexprs["BLOCK_M"] in block_ms:
                continue
            block_ms.add(v.constexprs["BLOCK_M"])
            label, _, error, sass = compile_one("sparse24_matmul", index, 90, want_sass=True)
            result[label] = dict(error=error, block_m=v.constexprs["BLOCK_M"], **_sass_flags(sass or ""))
    print("RESULT " + json.dumps(result))


def _sass_flags(sass: str) -> dict:
    return dict(wide_loads="LDG.E.128" in sass or "LDGSTS.E.BYPASS.128" in sass,
                spills=bool(re.search(r"\bLDL\b|\bSTL\b", sass)), tensor_core="HGMMA" in sass or "HMMA" in sass)


# ------------------------------------------------------------------------------------------------------
# the tests

def _run(*args: str, timeout: int) -> dict:
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silences Triton 3.9's notice; each variant sets fp fusion itself
    done = subprocess.run([sys.executable, "-m", "tests.kernels.test_compiles_for_gpu", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@needs_triton
def test_kernel_list_is_current():
    """The module docstring names every discovered kernel (and only those), so a reader and the repo's
    checks see them; discovery itself, not this list, decides what is compiled."""
    found = _run("list", timeout=300)
    listed = dict(re.findall(r"^ {4}(\w+): ((?:\w+(?:, |,\n {17})?)+)$", __doc__, flags=re.M))
    listed = {m: [k.strip() for k in ks.replace("\n", " ").split(",") if k.strip()] for m, ks in listed.items()}
    assert found == listed, f"update the module docstring's kernel list to {found}"


EXTRA_MODULE = '''
import triton
import triton.language as tl
from sparsekit.triton_kernels.variants import Variant

@triton.jit
def _declared_kernel(out_ptr, BLOCK: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, BLOCK), 1.0)

@triton.jit
def _undeclared_kernel(out_ptr):
    tl.store(out_ptr, 1.0)

def compile_variants():
    return [Variant(_declared_kernel, dict(out_ptr="*fp32"), dict(BLOCK=64)), Variant(_declared_kernel, {}, {})]
'''

PLAN_WITH_EXTRA = '''
import sys
from sparsekit import triton_kernels
from tests.kernels import test_compiles_for_gpu as t
triton_kernels.__path__.append(sys.argv[1])
jobs, problems = t.plan()
print("RESULT", [j for j in jobs if j[0] == "zz_extra"], problems)
'''


@needs_triton
def test_a_kernel_without_variants_or_with_a_bad_one_is_reported(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    (tmp_path / "zz_extra.py").write_text(EXTRA_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", PLAN_WITH_EXTRA, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "[('zz_extra', 0, 90), ('zz_extra', 0, 80)]" in out, out
    assert "zz_extra._undeclared_kernel: no launch variants declared" in out, out
    assert "zz_extra._declared_kernel [" in out and "arguments not given ['out_ptr', 'BLOCK']" in out, out


@needs_triton
def test_every_kernel_compiles_for_sm80_and_sm90a():
    result = _run("all", timeout=3600)
    print(f"Triton {result['triton']}: {result['compiled']} compiles in {result['wall_s']} s with {result['workers']} "
          f"workers, {result['cpu_s']} CPU s; CPU seconds per kernel {result['cpu_s_per_kernel']}")
    assert not result["problems"], "\n".join(result["problems"])
    assert not result["failures"], f"{len(result['failures'])} of {result['compiled']} compiles failed:\n" + \
        "\n\n".join(result["failures"][:20])


@needs_triton
def test_sparse24_matmul_sass_has_wide_loads_and_tensor_cores():
    """The 2:4 matmul (bf16, one autotune config per BLOCK_M) streams 16-byte loads and uses tensor cores on
    the dot path (BLOCK_M >= 16); the sm_90a SASS is read with Triton's cuobjdump."""
    result = _run("sass", timeout=1200)
    assert len(result) == 7, result  # BLOCK_M 1, 2, 4 (gather path), 16, 32, 64, 128 (dot path)
    for label, row in result.items():
        assert row["error"] is None, f"{label}: {row['error']}"
        assert row["wide_loads"], f"{label}: no 16-byte loads"
        if row["block_m"] >= 16:
            assert row["tensor_core"], f"{label}: no tensor-core instruction"


if __name__ == "__main__":
    main()
