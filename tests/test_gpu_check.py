"""benchmarks/gpu_check.py is run on a lent GPU only now and then: its --tiny
mode runs the same code on the CPU here so that it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_tiny_on_the_cpu_and_ends_with_one_json_line():
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--repeats", "1"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for length in (512, 1024):
        assert figures[f"ttft_full_{length}"] > 0 and figures[f"ttft_warm_block_{length}"] > 0
        assert figures[f"probe_time_ratio_{length}"] > 0
    assert figures["span_max_abs_diff"] < 1e-4 and figures["rope_max_abs_diff"] < 1e-4
