"""The selection and activation-statistics kernels compile for an H100 (sm_90) without a GPU.

The interpreter runs kernels as Python and misses errors that only the compiler raises (e.g. a
constexpr re-assigned inside tl.static_range), so CI also compiles each kernel variant the GPU
launchers use, in a subprocess without TRITON_INTERPRET (Triton ships ptxas).
"""
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import needs_triton

COMPILE_ALL = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sparsekit.triton_kernels import activation_stats as stats, select_mask as sel

    def build(fn, sig, consts):
        sig = {name: sig.get(name, "constexpr") for name in fn.arg_names}
        triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

    row = dict(k_ptr="*i32", keep_ptr="*i1", rows="i32", cols="i32", stride_r="i32", stride_c="i32")
    build(sel._row_select_kernel, dict(src_ptr="*bf16", norm_ptr="*fp32", **row), dict(HAS_NORM=True, WIDE=False, ROWS=1, BLOCK=1024))
    build(sel._row_select_kernel, dict(src_ptr="*fp64", norm_ptr="*fp64", **row), dict(HAS_NORM=False, WIDE=True, ROWS=1, BLOCK=128))
    build(sel._nm_select_kernel, dict(src_ptr="*bf16", norm_ptr="*fp32", keep_ptr="*i1", n_groups="i32", groups_per_row="i32",
          stride_r="i32", stride_c="i32"), dict(N=2, M=4, M_PAD=4, BLOCK_G=512, HAS_NORM=True, WIDE=False))
    flat = dict(src_ptr="*fp32", numel="i32", state_ptr="*i64", blocks_per_program="i32")
    build(sel._matrix_histogram_kernel, dict(hist_ptr="*i64", **flat), dict(SHIFT=24, WIDE=False, BLOCK=1024))
    build(sel._matrix_pick_kernel, dict(state_ptr="*i64", hist_ptr="*i64"), dict(SHIFT=24, WIDE=False))
    build(sel._matrix_ties_kernel, dict(counts_ptr="*i32", **flat), dict(WIDE=False, BLOCK=1024))
    build(sel._matrix_mask_kernel, dict(ties_before_ptr="*i64", keep_ptr="*i1", **flat), dict(WIDE=False, BLOCK=1024))
    build(stats._activation_partials_kernel, dict(x_ptr="*bf16", part_ptr="*fp32", S="i32", C="i32", span="i32",
          stride_b="i32", stride_s="i32", stride_c="i32"), dict(BLOCK_S=32, BLOCK_C=128))
    print("compiled")
''')


@needs_triton
def test_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silences Triton 3.9's notice; fusion is the default either way
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
