"""The two protocol benchmarks run and end with their JSON line (a benchmark is not a test: the
figures are not asserted here, only that the scripts work and report every field)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.upy import ROOT, run_upy


def test_wire_size_prints_its_json_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "wire_size.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in (
        "report_bytes",
        "json_bytes",
        "sparkplug_bytes",
        "ratio_vs_json",
        "ratio_vs_sparkplug",
    ):
        assert out[k] > 0
    assert set(out["reports"]) == {"access_point", "air_quality_noise"}
    assert all(r["metrics"] >= 10 for r in out["reports"].values())


def test_device_codec_runs_in_64k() -> None:
    from tools.firmware_build import build

    build()  # the benchmark measures the compiled modules a device runs
    res = run_upy(ROOT / "benchmarks" / "device_codec.py", heap="64K", timeout=120).check()
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for k in ("encode_sign_us", "json_us", "ratio_vs_json", "heap_bytes_per_report"):
        assert out[k] > 0
