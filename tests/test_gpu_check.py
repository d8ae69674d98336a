"""`benchmarks/gpu_check.sh --smoke`: every section of the GPU proof runs its real code path on the CPU.

The smoke run is a real subprocess started from another folder (the wrapper must find the repository itself),
shared by the tests of this module (about 20 s on a 2-core machine). The failure test calls `main()` in this
process with one section made to fail, which is cheaper than a second subprocess and lets it inject the error.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
SECTIONS = ["amp", "autoattack", "ddp", "throughput"]
AMP_RTOL = 0.02
"""Largest relative distance of a bf16 or fp16 loss to fp32 over the smoke run's 3 steps (tiny DS-Net, batch 8,
PGD-10 AT). Measured: 0.4 % for both (the attack's sign steps and Adam's normalised steps make small rounding
differences visible from the second step on); the fp32 loss itself falls by 7 % over these steps, so 2 % keeps a
5x margin and still sees a run that does not train or that computes something else."""
DDP_ATOL = 2e-3
"""Two processes on half batches vs one on the whole batch, after 2 steps: measured 6e-5; the bound is
tests/training/test_ddp.py's WEIGHT_ATOL (float sums in another order, amplified by BatchNorm)."""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([str(SCRIPT), "--smoke", "--out-dir", str(out)], cwd=out, env=_env(), check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "results-gpu-smoke.json").read_text())
    return SimpleNamespace(done=done, out=out, report=report, sections=report["sections"])


def test_the_smoke_run_records_every_section_and_its_machine(smoke: SimpleNamespace) -> None:
    report = smoke.report
    assert report["format"] == "dsnet-gpu-check/1" and report["smoke"] is True and report["status"] == "ok"
    assert list(smoke.sections) == SECTIONS
    for name, section in smoke.sections.items():
        assert section["status"] == "ok", (name, section.get("error"))
        assert section["wall_s"] > 0
    assert report["device"].startswith("CPU") and report["torch"] == str(torch.__version__)
    assert report["command"] == f"benchmarks/gpu_check.sh --smoke --out-dir {smoke.out}"
    assert report["date"][:4].isdigit() and 0 < report["wall_s"] < report["plan"]["deadline_s"]
    assert not list(smoke.out.glob("results-gpu.*"))  # a smoke run never stands in for the GPU figures
    # progress with timestamps on stderr, one start and one end line per section
    stamped = re.findall(r"^\[\d\d:\d\d:\d\d \+\s*\d+\.\ds\] (\w+): (start|ok)", smoke.done.stderr, re.MULTILINE)
    assert stamped == [(name, event) for name in SECTIONS for event in ("start", "ok")]


def test_throughput_compares_plain_and_fast_paths_for_each_model(smoke: SimpleNamespace) -> None:
    section = smoke.sections["throughput"]
    assert list(section["models"]) == ["dsnet_tiny", "wrn_tiny", "dm_wrn_tiny"]
    assert section["errors"] == {} and section["skipped"] == []
    for row in section["models"].values():
        assert row["plain"]["settings"] == {"channels_last": False, "compile": False, "train_precision": "fp32",
                                            "eval_precision": "fp32"}
        assert row["fast"]["settings"]["channels_last"] is True and row["fast"]["settings"]["compile"] is False
        for path in ("plain", "fast"):
            assert row[path]["at_images_per_s"] > 0 and row[path]["eval_images_per_s"] > 0
            assert len(row[path]["at_step_s"]) == 2 and row[path]["at_flops_per_s"] > 0
            assert row[path]["at_share_of_peak"] is None  # no GPU peak on a CPU
        assert row["speedup"]["at"] > 0 and row["flops_per_image"]["at"] > row["flops_per_image"]["forward"] > 0
        assert row["agreement"]["max_abs_logit_diff"] < 1e-4  # both fp32 on a CPU: the same function


def test_mixed_precision_losses_are_finite_and_close_to_fp32(smoke: SimpleNamespace) -> None:
    section = smoke.sections["amp"]
    assert section["steps"] == 3 and section["model"] == "dsnet_tiny"
    precisions = section["precisions"]
    assert list(precisions) == ["fp32", "bf16", "fp16"]
    assert [p["autocast_dtype"] for p in precisions.values()] == [None, "bfloat16", "float16"]
    assert [p["grad_scaler"] for p in precisions.values()] == [False, False, True]
    assert precisions["fp16"]["final_scale"] == 2.0 ** 16 and precisions["fp16"]["skipped_steps"] == 0
    for name, p in precisions.items():
        assert len(p["losses"]) == 3 and all(math.isfinite(v) for v in p["losses"]), name
        assert p["nonfinite_losses"] == 0 and p["images_per_s"] > 0
        assert p["max_rel_diff_to_fp32_tail"] <= AMP_RTOL, name
    assert precisions["fp32"]["max_rel_diff_to_fp32_tail"] == 0.0
    # the reduced precisions really ran: their first loss, from the same weights and batch, is not fp32's
    assert all(precisions[name]["first_step_rel_diff_to_fp32"] > 0 for name in ("bf16", "fp16"))


def test_autoattack_runs_in_both_math_modes_on_the_same_points(smoke: SimpleNamespace) -> None:
    section = smoke.sections["autoattack"]
    assert section["points"] == 16 and section["weights"] == "the amp section's fp32 weights"
    assert section["stage_settings"]["apgd-ce"]["n_iter"] == 5  # the smoke's reduced budgets reached the reference
    for mode in ("fp32", "tf32"):
        accuracy = section["modes"][mode]
        assert 0.0 <= accuracy["robust_accuracy"] <= accuracy["clean_accuracy"] <= 1.0
        assert accuracy["seconds"] > 0
    assert set(section["math_settings"]["fp32"].values()) == {"ieee"}
    assert section["math_settings"]["tf32"]["cudnn.conv"] == "tf32"
    assert section["math_settings"]["tf32"]["mkldnn.conv"] == "ieee"
    # On a CPU "tf32" computes what "fp32" does, and AutoAttack is seeded: not one flag may differ.
    assert section["robust_flags_differ"] == section["clean_flags_differ"] == section["breaking_attack_differs"] == 0
    assert section["speed_ratio_fp32_over_tf32"] > 0


def test_ddp_ran_two_processes_over_gloo_and_matches_one_process(smoke: SimpleNamespace) -> None:
    section = smoke.sections["ddp"]
    assert section["world_size"] == 2 and section["backend"] == "gloo" and section["rank0_device"] == "cpu"
    assert section["replica_divergence"] == 0.0
    assert 0 < section["max_abs_diff_to_one_process"] < DDP_ATOL  # > 0: the two runs really were separate
    assert section["images_per_s"] > 0


def test_the_markdown_section_is_written_and_printed(smoke: SimpleNamespace) -> None:
    text = (smoke.out / "results-gpu-smoke.md").read_text()
    assert text.startswith("## ") and "(smoke run, toy sizes)" in text
    for header in ("| model | path | AT img/s |", "| precision | final loss |", "| math | clean acc. |"):
        assert header in text
    assert "| dm_wrn_tiny | fast |" in text and "| fp16 + GradScaler |" in text
    assert "DDP: 2 processes over gloo" in text and "Per-point robust flags that differ: 0 of 16" in text
    assert text.strip() in smoke.done.stdout


# ------------------------------------------------------------------------------------------- failures and refusal
def _gpu_check(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on the path: undone after
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_a_failing_section_is_recorded_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    gpu_check = _gpu_check(monkeypatch)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "run_amp", broken)
    code = gpu_check.main(["--smoke", "--out-dir", str(tmp_path), "--sections", "amp,autoattack,throughput",
                           "--models", "no_such_model,wrn_tiny"])
    assert code == 1
    report = json.loads((tmp_path / "results-gpu-smoke.json").read_text())
    sections = report["sections"]
    assert report["status"] == "failed"
    assert sections["amp"]["status"] == "failed"
    assert sections["amp"]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "in broken" in sections["amp"]["traceback"]
    # AutoAttack went on without the amp section's weights, and said so.
    assert sections["autoattack"]["status"] == "ok" and sections["autoattack"]["weights"].startswith("seeded")
    assert sections["ddp"] == {"status": "not asked"}
    # One model's failure costs the section its "ok", not the next model's figures.
    throughput = sections["throughput"]
    assert throughput["status"] == "failed" and list(throughput["models"]) == ["wrn_tiny"]
    assert "no_such_model" in throughput["errors"]["no_such_model"]["error"]
    text = (tmp_path / "results-gpu-smoke.md").read_text()
    assert "**amp**: failed: `RuntimeError: CUDA error" in text and "no_such_model failed" in text
    assert "| wrn_tiny | fast |" in text


def test_unknown_sections_are_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    gpu_check = _gpu_check(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--smoke", "--sections", "amp,flops"])
    assert exit_info.value.code == 2
    assert "--sections: unknown flops; choose from amp, autoattack, ddp, throughput" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_only_the_smoke_run_is_allowed(tmp_path: Path) -> None:
    done = subprocess.run([str(SCRIPT), "--out-dir", str(tmp_path)], env=_env(), check=False, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_check: error: no GPU here: use --smoke for the CPU check"
    assert not any(tmp_path.iterdir())
