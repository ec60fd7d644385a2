"""bench/gpu_suite.py's dry run: every step's Python on the CPU (tiny shapes,
the build printed, the GPU tests collected), so that the one call a GPU
session makes cannot rot between sessions. The files it writes are those the
device runner brings back: at most 8, in --out itself, with plain names."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_suite  # noqa: E402


@pytest.mark.slow
def test_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_suite.py"), "--out", str(out), "--dry-run",
                        "--budget", "900"], capture_output=True, text=True, env=env, timeout=1200)
    summary = json.loads((out / "summary.json").read_text())
    assert p.returncode == 0 and summary["result"] == "ok", p.stdout[-4000:] + p.stderr[-2000:]
    assert [s for s, _, _ in gpu_suite.STEPS] == list(summary["steps"])
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert {"suite.log", "summary.json", "smoke.csv", "e2e.csv", "attention.csv", "tests.log",
            "acceptance.csv"} <= set(files)
    rows = {name: list(csv.DictReader(open(out / f"{name}.csv"))) for name in ("smoke", "e2e", "attention",
                                                                                 "acceptance")}
    assert all(r["ok"] == "True" for r in rows["smoke"]) and len(rows["smoke"]) >= 8
    assert {r["engine"] for r in rows["e2e"]} >= {"autoregressive", "self-speculative", "self-speculative int8 head"}
    assert all(r["error"] == "" and r["same_tokens"] == "True" for r in rows["e2e"]), rows["e2e"]
    assert {r["impl"] for r in rows["attention"]} >= {"sdpa", "flex_attention"}
    assert all(r["ok"] == "True" for r in rows["attention"]), rows["attention"]
    assert rows["acceptance"] and all(r["matches_reference"] == "True" for r in rows["acceptance"])
    tests_log = (out / "tests.log").read_text()
    assert re.search(r"\d+ tests? collected", tests_log), tests_log[-2000:]


def test_step_timeouts_share_the_deadline(tmp_path):
    """A step's timeout is its cap, cut so that the later steps keep the least
    they need; past the deadline a step is skipped, not started."""
    suite = gpu_suite.Suite(str(tmp_path), dry=True, budget=300)
    later = lambda name: sum(s[2] for s in gpu_suite.STEPS[[s[0] for s in gpu_suite.STEPS].index(name) + 1:])
    assert suite.timeout("build") <= 300 - later("build")
    assert suite.timeout("acceptance") <= 45
    suite.deadline = suite.t0 + 1
    assert suite.run("tests", [sys.executable, "-c", "print(1)"]) == 124
    assert json.loads((tmp_path / "summary.json").read_text())["steps"]["tests"]["status"] == "skipped (deadline)"


def test_a_hung_step_is_killed_at_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "STEPS", [("smoke", 6, 1)])
    suite = gpu_suite.Suite(str(tmp_path), dry=True, budget=100)
    rc = suite.run("smoke", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"])
    info = json.loads((tmp_path / "summary.json").read_text())["steps"]["smoke"]
    assert rc == 124 and info["status"] == "timed out" and info["seconds"] < 30
    assert "started" in (tmp_path / "suite.log").read_text()
