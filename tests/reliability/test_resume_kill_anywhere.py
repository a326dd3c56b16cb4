"""A run killed at any step of the checkpoint write resumes to the identical model."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import save_tiny_checkpoint, tiny_llama

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("method", ["sparsegpt"])
def test_kill_at_every_step_of_checkpoint_save_resumes_bit_identical(tmp_path, method):
    save_tiny_checkpoint(tmp_path / "model", lambda: tiny_llama(layers=3))
    driver = os.path.join(REPO, "tests", "reliability", "kill_anywhere_driver.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, driver, str(tmp_path / "model"), method], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] >= 3 * 8  # every save has several steps (temp file, write, fsync, rename, ...)
    assert result["failures"] == []
