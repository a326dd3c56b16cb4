"""The Triton 2:4 matmul compiles for an H100 (sm_90) without a GPU, with wide loads and no spills.

The interpreter runs kernels as Python; only the compiler catches lowering errors, register spills or
loads that did not vectorize. This compiles representative variants (gather path, dot path, split-K or
not, masked or not, bf16 / fp32) in a subprocess without TRITON_INTERPRET, as the GPU launch specializes
them (unit strides for x's columns and out's columns, 16-divisible sizes), and reads the SASS.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import needs_triton

COMPILE = textwrap.dedent('''
    import os, re, subprocess, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sparsekit.triton_kernels import sparse24_matmul as mod

    CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    fn = mod._sparse24_matmul_kernel

    def build(dtype, bm, bn, bk, warps, stages, split, bias=True, even=True):
        ptrs = dict(x_ptr=dtype, values_ptr=dtype, meta_ptr="*i16", bias_ptr=dtype, out_ptr=dtype, ws_ptr="*fp32",
                    count_ptr="*i32")
        ints = ["M", "N", "K", "M_BUCKET", "stride_xm", "stride_vn", "stride_om"] + ([] if split == 1 else ["SPLIT_K"])
        sig = {name: ptrs.get(name, "i32" if name in ints else "constexpr") for name in fn.arg_names}
        consts = dict(stride_xk=1, stride_on=1, HAS_BIAS=bias, EVEN_N=even, EVEN_K=even, IEEE=dtype == "*fp32",
                      BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **({"SPLIT_K": 1} if split == 1 else {}))
        consts = {(fn.arg_names.index(k),): v for k, v in consts.items()}
        aligned = ["x_ptr", "values_ptr", "meta_ptr", "bias_ptr", "out_ptr", "ws_ptr", "count_ptr", "N", "K", "stride_xm",
                   "stride_vn", "stride_om"]
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
        kernel = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": warps, "num_stages": stages})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"]); f.flush()
            sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True).stdout
        return sass

    for args, kw, no_spill in [
        (("*bf16", 1, 32, 256, 4, 3, 4), {}, True),           # decode, gather path, split-K
        (("*bf16", 2, 64, 128, 4, 4, 1), {"bias": False}, True),
        (("*fp16", 4, 64, 64, 4, 4, 2), {"even": False}, False),
        (("*bf16", 16, 64, 128, 4, 4, 2), {}, True),          # dot path (wgmma on sm_90), split-K
        (("*bf16", 64, 128, 64, 8, 4, 1), {"even": False}, False),
        (("*fp32", 16, 32, 64, 4, 2, 1), {}, False),          # the fp32 test path
    ]:
        sass = build(*args, **kw)
        assert "LDG.E.128" in sass or "LDGSTS.E.BYPASS.128" in sass, f"{args}: no 16-byte loads"
        if no_spill:
            assert not re.search(r"\\bLDL\\b|\\bSTL\\b", sass), f"{args}: registers spill to local memory"
        if args[1] >= 16 and args[0] != "*fp32":
            assert "HGMMA" in sass or "HMMA" in sass, f"{args}: no tensor-core instruction"
    print("compiled")
''')


@needs_triton
def test_sparse24_matmul_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
