"""sparsekit: post-training pruning of LLMs with fused kernels.

The CUDA extension in csrc/ is built only when a CUDA torch and a CUDA toolchain are
visible at build time (use `pip install --no-build-isolation -e .` so the build sees
your torch). Knobs: SPARSEKIT_SKIP_CUDA_BUILD=1, SPARSEKIT_CUDA_ARCHS="80;90a".
"""
import glob
import os

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["sparsekit", "sparsekit.*"]) + ["sparsekit.triton_kernels"]
# Triton publishes its own top-level `triton_kernels`, so our folder installs under sparsekit.
PACKAGE_DIR = {"sparsekit": "sparsekit", "sparsekit.triton_kernels": "triton_kernels"}


def cuda_extension():
    """Return (ext_modules, cmdclass); empty when no CUDA build is possible."""
    if os.environ.get("SPARSEKIT_SKIP_CUDA_BUILD", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return [], {}
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True) + glob.glob("csrc/**/*.cu", recursive=True))
    if not sources:
        return [], {}
    archs = os.environ.get("SPARSEKIT_CUDA_ARCHS", "80;90a").split(";")
    gencode = []
    for arch in archs:
        arch = arch.strip()
        if arch:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    ext = CUDAExtension(
        "sparsekit._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math", *gencode]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extension()

setup(
    name="sparsekit",
    version="0.1.0",
    description="Post-training LLM pruning (Wanda, SparseGPT, DSnoT, BESA, OWL) with fused Triton/CUDA kernels and 2:4 inference",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_data={"sparsekit": ["tuning/*.json"]},  # measured dispatcher tables (python -m benchmarks kernels --write-table)
    package_dir=PACKAGE_DIR,
    install_requires=[
        # Triton 3.6 (torch 2.11's) to 3.9: the kernels compile on both in CI (.ci/run,
        # tests/kernels/test_compiles_for_gpu.py); older torch wheels pin an older Triton.
        "torch>=2.11",
        "triton>=3.6,<3.10; platform_system == 'Linux'",
        "transformers>=4.56",
        "gguf>=0.10",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "numpy",
        "scipy",  # linear_sum_assignment for N:M channel permutation (sparsekit.ops.permutation)
        "tqdm",
        "pyarrow",
        "prodigyopt",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "matplotlib", "ruff", "lm-eval>=0.4.9.2"],  # lm-eval: tests/eval/test_lm_eval_parity.py
        "bench": ["matplotlib"],
        "eval": ["lm-eval"],
    },
    entry_points={"console_scripts": ["sparsekit=sparsekit.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
