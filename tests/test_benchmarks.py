"""The training benchmark: its report is complete and sane, and its baseline step is faithful.

Speed is never asserted here: targets are benchmark figures (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from csm_adapt.model.checkpoint import build_model
from csm_adapt.model.config import MODEL_CONFIGS

_spec = importlib.util.spec_from_file_location(
    "train_throughput", Path(__file__).parents[1] / "benchmarks" / "train_throughput.py"
)
tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tt)

ARGS = MODEL_CONFIGS["micro"]


def test_report_has_the_figures(tmp_path):
    out = tmp_path / "out.json"
    tt.main(["--model", "micro", "--device", "cpu", "--rows", "512", "--rows-per-step", "1024", "--steps", "2",
             "--warmup", "1", "--repeats", "1", "--peak-flops", "1e12", "--json", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["config"]["accum"] == 2 and report["config"]["precision"] == "fp32"
    assert report["machine"]["torch"] == torch.__version__
    assert report["data"]["frames_per_step"] > report["data"]["decoder_frames_per_step"] > 0
    for name in ("ours", "baseline"):
        r = report["results"][name]
        assert r["steps"] == 2
        assert r["frames_per_s"] > 0 and r["backbone_positions_per_s"] > r["frames_per_s"]  # text rows count too
        assert r["optimizer_steps_per_s"] > 0
        assert 0 < r["mfu"] < 1
        assert r["mfu"] == pytest.approx(r["model_flops_per_s"] / 1e12)
        assert set(r["phase_ms_median"]) == {"forward", "backward", "optimizer"}
        assert all(ms > 0 for ms in r["phase_ms_median"].values())
        assert r["peak_rss_mib"] > 0 and "cuda_max_allocated_mib" not in r
    assert report["ratio_frames_per_s"] == pytest.approx(
        report["results"]["ours"]["frames_per_s"] / report["results"]["baseline"]["frames_per_s"]
    )
    assert "6*N_bb*P" in report["mfu_formula"]


def test_mfu_is_na_without_a_peak_on_cpu():
    assert tt.peak_flops(torch.device("cpu"), None) is None


def test_flop_formula_counts_the_real_parameters():
    model = build_model(ARGS)
    for flavor, transformer in ((ARGS.backbone, model.backbone), (ARGS.decoder, model.decoder)):
        assert tt._layer_params(flavor) == sum(p.numel() for p in transformer.layers[0].parameters())


def _steps(rows: int, accum: int, baseline_batch: int = 3):
    packer = tt.Packer(max_rows=rows, rows_per_batch=rows, pad_multiple=64)
    return tt.make_steps(tt.synthetic_batches(12, ARGS, packer, seed=3), accum, ARGS, 3, baseline_batch)


def test_both_layouts_hold_the_same_samples():
    step = _steps(512, 2)[0]
    padded = [b for b, _ in step.padded]
    assert all(b.tokens.shape[0] <= 3 for b in padded) and sum(b.num_samples for b in padded) == step.samples
    assert sum(b.num_rows for b in padded) == sum(b.num_rows for b, _ in step.packed)
    assert sum(b.num_frames for b in padded) == step.frames
    assert sum(int(m.sum()) for _, m in step.padded) == step.decoder_frames
    # bucketed by frame count: each batch's samples are no shorter than the previous batch's
    frames = [b.target_mask.sum(1) for b in padded]
    assert all(prev.max() <= cur.min() for prev, cur in zip(frames, frames[1:]))


def test_baseline_step_computes_our_loss():
    """Same weights, samples and decoder frames: the padded, dense-mask, materialised-embedding step
    and our packed step must agree on the loss, and so on the update."""
    step = _steps(512, 2)[0]
    assert step.samples > 3 and len(step.padded) > 1  # several samples per sequence, several padded batches
    cpu = torch.device("cpu")
    losses, weights = [], []
    for name in ("ours", "baseline"):
        model = build_model(ARGS, seed=1).train()
        # plain SGD: both steps then take the same update, so the weights show the gradients agree
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        if name == "ours":
            loss = tt.our_step(model, opt, step, cpu, "fp32", model, lambda phase: None)
        else:
            loss = tt.baseline_step(model, opt, step, cpu, lambda phase: None)
        losses.append(loss)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert losses[0] > 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)
