"""`--dtype auto`: bf16 only where the device multiplies it natively. Each branch with forced capabilities,
plus the real emulation of a CPU without native bf16 (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA) in a subprocess."""
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from sparsekit import dtypes
from sparsekit.hf.loading import load_model
from tests.helpers import save_tiny_checkpoint, tiny_llama


def force_cpu(monkeypatch, *, arch="x86_64", capability="AVX512", onednn=True, flags=("avx2", "avx512_bf16"), ratio=None):
    """Pretend to run on a CPU with these properties; `ratio` None means the micro-timing must not run."""
    monkeypatch.setattr(platform, "machine", lambda: arch)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(dtypes, "_onednn_bf16", lambda: onednn)
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: None if flags is None else set(flags))

    def timing():
        if ratio is None:
            raise AssertionError("the micro-timing ran although the capabilities already decided")
        return ratio

    monkeypatch.setattr(dtypes, "bf16_matmul_ratio", timing)


def test_avx2_cpu_gets_float32_without_timing(monkeypatch):
    force_cpu(monkeypatch, capability="AVX2")
    dtype, why = dtypes.choose_dtype("cpu")
    assert dtype == torch.float32 and "AVX2" in why


def test_onednn_without_bf16_gets_float32(monkeypatch):
    force_cpu(monkeypatch, onednn=False)
    assert dtypes.choose_dtype("cpu")[0] == torch.float32


def test_avx512_without_bf16_flags_gets_float32(monkeypatch):
    force_cpu(monkeypatch, flags=("avx2", "avx512f", "avx512bw"))
    dtype, why = dtypes.choose_dtype(None)
    assert dtype == torch.float32 and "avx512_bf16" in why


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_native_x86_bf16_confirmed_by_timing_gets_bf16(monkeypatch, flag):
    force_cpu(monkeypatch, flags=("avx2", flag), ratio=0.3)
    dtype, why = dtypes.choose_dtype("cpu")
    assert dtype == torch.bfloat16 and "0.30x" in why


def test_flags_present_but_timing_slow_gets_float32(monkeypatch):
    force_cpu(monkeypatch, ratio=1.4)
    dtype, why = dtypes.choose_dtype("cpu")
    assert dtype == torch.float32 and "1.4x" in why


@pytest.mark.parametrize("flags,ratio,expected", [(("asimd", "sve"), None, torch.float32),
                                                  (("asimd", "bf16"), 0.5, torch.bfloat16),
                                                  (("asimd", "bf16"), 3.0, torch.float32)])
def test_arm(monkeypatch, flags, ratio, expected):
    force_cpu(monkeypatch, arch="aarch64", capability="SVE256", onednn=None, flags=flags, ratio=ratio)
    assert dtypes.choose_dtype("cpu")[0] == expected


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
@pytest.mark.parametrize("ratio,expected", [(0.6, torch.bfloat16), (8.0, torch.float32)])
def test_unreadable_flags_let_the_timing_decide(monkeypatch, arch, ratio, expected):
    force_cpu(monkeypatch, arch=arch, capability="DEFAULT", onednn=None, flags=None, ratio=ratio)
    assert dtypes.choose_dtype("cpu")[0] == expected


@pytest.mark.parametrize("native,expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_cuda(monkeypatch, native, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    dtype, why = dtypes.choose_dtype("cuda:0")
    assert dtype == expected and "Some GPU" in why


def test_other_device_gets_float32():
    assert dtypes.choose_dtype("meta")[0] == torch.float32


def test_cpu_flags_parses_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert dtypes.cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert "bf16" in dtypes.cpu_flags(arm)
    assert dtypes.cpu_flags(tmp_path / "missing") is None


def test_timing_probe_is_cached_per_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_CACHE", str(tmp_path))
    dtypes.bf16_matmul_ratio.cache_clear()
    ratio = dtypes.bf16_matmul_ratio(rows=4, inner=8, cols=16)  # tiny: no real bf16 work in the suite
    assert ratio > 0
    stored = json.loads((tmp_path / dtypes.PROBE_FILE).read_text())
    (key,) = stored
    assert key.endswith("4x8x16") and stored[key] == ratio
    stored[key] = 123.0  # a stored measurement is reused, not repeated
    (tmp_path / dtypes.PROBE_FILE).write_text(json.dumps(stored))
    dtypes.bf16_matmul_ratio.cache_clear()
    assert dtypes.bf16_matmul_ratio(rows=4, inner=8, cols=16) == 123.0
    other_isa = "SSE41" if os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2" else "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", other_isa)  # another environment is another measurement
    dtypes.bf16_matmul_ratio.cache_clear()
    assert dtypes.bf16_matmul_ratio(rows=4, inner=8, cols=16) != 123.0
    assert len(json.loads((tmp_path / dtypes.PROBE_FILE).read_text())) == 2
    dtypes.bf16_matmul_ratio.cache_clear()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 emulation variables")
def test_emulated_cpu_without_native_bf16_gets_float32():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    code = "from sparsekit.dtypes import choose_dtype; d, why = choose_dtype('cpu'); print(d); print(why)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "torch.float32", out


def test_load_model_auto_prints_the_choice(tmp_path, monkeypatch, capsys):
    save_tiny_checkpoint(tmp_path / "m")
    monkeypatch.setattr(dtypes, "choose_dtype", lambda device: (torch.float32, "forced for the test"))
    model, _ = load_model(str(tmp_path / "m"))
    assert model.dtype == torch.float32
    assert "dtype float32 (auto): forced for the test" in capsys.readouterr().err


def test_load_model_checkpoint_keeps_the_stored_dtype(tmp_path, monkeypatch):
    save_tiny_checkpoint(tmp_path / "m", lambda: tiny_llama().to(torch.bfloat16))
    monkeypatch.setattr(dtypes, "choose_dtype", lambda device: pytest.fail("'checkpoint' must not choose"))
    assert load_model(str(tmp_path / "m"), dtype="checkpoint")[0].dtype == torch.bfloat16
