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
from csm_adapt.training import precision

_spec = importlib.util.spec_from_file_location(
    "train_throughput", Path(__file__).parents[1] / "benchmarks" / "train_throughput.py"
)
tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tt)

ARGS = MODEL_CONFIGS["micro"]


def _bf16_cpu(monkeypatch, units):
    """Pretend the CPU has (or lacks) bf16 units, for the benchmark and for `auto`."""
    monkeypatch.setattr(tt, "cpu_bf16_units", lambda cpuinfo=None: units)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda cpuinfo=None: units)


def test_report_has_every_variant_at_every_step_size(tmp_path, monkeypatch):
    _bf16_cpu(monkeypatch, "amx_bf16")  # bf16 autocast runs on any CPU, emulated where there are no units
    out = tmp_path / "out.json"
    tt.main(["--model", "micro", "--device", "cpu", "--rows", "256", "--rows-per-step", "256,512", "--steps", "1",
             "--warmup", "1", "--repeats", "1", "--peak-flops", "1e12", "--json", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    names = ["ours fp32", "ours bf16", "baseline fp32", "baseline amp (bf16)"]
    assert report["config"]["variants"] == names and report["config"]["headline"] == "ours fp32"  # `auto` on a CPU
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cpu_bf16_units"] == "amx_bf16"
    assert [(s["rows_per_step"], s["rows_per_micro_batch"], s["accum"]) for s in report["sizes"]] == [
        (256, 256, 1),
        (512, 256, 2),
    ]
    for size in report["sizes"]:
        assert size["data"]["frames_per_step"] > size["data"]["decoder_frames_per_step"] > 0
        assert list(size["results"]) == names
        for r in size["results"].values():
            assert r["steps"] == 1 and len(r["losses"]) == 2  # warm-up + first pass
            assert r["frames_per_s"] > 0 and r["backbone_positions_per_s"] > r["frames_per_s"]  # text rows count
            assert r["optimizer_steps_per_s"] > 0
            assert 0 < r["mfu"] < 1 and r["mfu"] == pytest.approx(r["model_flops_per_s"] / 1e12)
            assert set(r["phase_ms_median"]) == {"forward", "backward", "optimizer"}
            assert all(ms > 0 for ms in r["phase_ms_median"].values())
            assert r["peak_rss_mib"] > 0 and "cuda_max_allocated_mib" not in r
        fps = {name: r["frames_per_s"] for name, r in size["results"].items()}
        fastest = max(("baseline fp32", "baseline amp (bf16)"), key=fps.get)
        assert size["fastest_baseline"] == fastest
        assert size["ratio_frames_per_s"] == pytest.approx(fps["ours fp32"] / fps[fastest])
        assert size["ratios"]["ours fp32"]["baseline fp32"] == pytest.approx(fps["ours fp32"] / fps["baseline fp32"])
        # bf16 against fp32 of the same method, same weights and data: close, not equal
        assert set(size["loss_rel_gap"]) == {"ours bf16", "baseline amp (bf16)"}
        assert all(0 < gap < 1e-2 for gap in size["loss_rel_gap"].values())
    assert "6*N_bb*P" in report["mfu_formula"]


def test_default_variants_follow_the_device(monkeypatch):
    opts = tt.parse_args([])
    _bf16_cpu(monkeypatch, None)
    assert [v.name for v in tt.variants(opts, torch.device("cpu"))] == ["ours fp32", "baseline fp32"]
    with pytest.raises(SystemExit, match="no bf16 units"):
        tt.variants(tt.parse_args(["--baseline", "amp"]), torch.device("cpu"))
    _bf16_cpu(monkeypatch, "avx512_bf16")
    assert [v.name for v in tt.variants(opts, torch.device("cpu"))] == [
        "ours fp32", "ours bf16", "baseline fp32", "baseline amp (bf16)"
    ]  # fmt: skip
    cuda = tt.variants(opts, torch.device("cuda"))
    assert [(v.name, v.precision) for v in cuda] == [
        ("ours bf16", "bf16"), ("baseline fp32", "fp32"), ("baseline amp (fp16)", "fp16")
    ]  # fmt: skip
    # "auto" is resolved, duplicates dropped; community variants only with --community-code
    auto = tt.variants(tt.parse_args(["--precision", "auto,fp32", "--baseline", "fp32"]), torch.device("cpu"))
    assert [v.name for v in auto] == ["ours fp32", "baseline fp32"]  # auto is fp32 on a CPU
    both = tt.variants(tt.parse_args(["--community-code", "x", "--baseline", "fp32"]), torch.device("cpu"))
    assert [v.method for v in both] == ["ours", "ours", "baseline", "community"]


def test_bad_sizes_and_variants_are_refused(capsys):
    for argv in (["--precision", "fp8"], ["--baseline", "fp16"], ["--rows-per-step", "0"]):
        with pytest.raises(SystemExit):
            tt.parse_args(argv)
    assert "--rows-per-step needs positive sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not a multiple of the micro-batch"):
        tt.build_steps(tt.parse_args(["--rows", "512"]), ARGS, 768)


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
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        if name == "ours":
            loss = tt.our_step(model, opt, scaler, step, cpu, "fp32", model, lambda phase: None)
        else:
            loss = tt.baseline_step(model, opt, scaler, step, cpu, "fp32", lambda phase: None)
        losses.append(loss)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert losses[0] > 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)


def test_baseline_optimizer_keeps_pytorch_defaults():
    """As the community builds it: no forced implementation, so CUDA gets foreach."""
    opt = tt.baseline_optimizer(build_model(ARGS), tt.TrainConfig(lr=1e-4, weight_decay=0.01))
    group = opt.param_groups[0]
    assert group["foreach"] is None and group["fused"] is None
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-4, 0.01, (0.9, 0.999))


# --- --community-code: the error paths and the plumbing (the checkouts are not in this repository) ---

cc = tt.community_code_module()


def _checkout(root: Path, *, models=True, finetune=True, forward="def forward(self, tokens, tokens_mask):\n    "
              "return torch.zeros(())\n") -> Path:  # fmt: skip
    if models:
        (root / "csm").mkdir(parents=True)
        (root / "csm" / "models.py").write_text("import torch\n")
    if finetune:
        (root / "sesame-finetune").mkdir(parents=True)
        (root / "sesame-finetune" / "utils.py").write_text(f"import wandb  # never imported by the check\n{forward}")
        (root / "sesame-finetune" / "dataloaders.py").write_text(
            "def collate_fn(batch: List[dict]):\n"
            "    tokens = pad_sequence([item['text'] for item in batch], batch_first=True)\n"
            "    return tokens, tokens > AUDIO_NUM_CODEBOOKS\n"
        )
    return root


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"models": False}, r"csm/models.py not found; expected .*/csm \(SesameAILabs/csm\) and .*/sesame-finetune"),
        ({"finetune": False}, r"sesame-finetune not found"),
        ({"forward": "def other():\n    pass\n"}, r"no top-level forward\(\) in any of .*utils.py, .*src/utils.py"),
        ({"forward": "def forward(self, t, m):\n    return helper(t)\n"}, r"forward\(\) uses helper, which"),
    ],
)
def test_community_code_names_what_is_missing(tmp_path, kw, message):
    with pytest.raises(cc.CommunityCodeError, match=message):
        cc.load(_checkout(tmp_path / "code", **kw), ARGS)


def test_community_code_needs_torchtune_and_the_model_classes(tmp_path, monkeypatch):
    root = _checkout(tmp_path / "code")
    monkeypatch.setattr(cc.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(cc.CommunityCodeError, match="imports torchtune, which is not installed: pip install torchtune"):
        cc.load(root, ARGS)
    monkeypatch.setattr(cc.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(cc.CommunityCodeError, match="has no Model, ModelArgs, FLAVORS, _create_causal_mask"):
        cc.load(root, ARGS)


def test_community_functions_run_as_written_with_the_provided_names(tmp_path):
    root = _checkout(tmp_path / "code")
    collate = cc._function(root / "sesame-finetune" / "dataloaders.py", "collate_fn", {
        "List": list, "pad_sequence": torch.nn.utils.rnn.pad_sequence, "AUDIO_NUM_CODEBOOKS": 2})  # fmt: skip
    tokens, mask = collate([{"text": torch.tensor([1, 3])}, {"text": torch.tensor([5])}])
    assert tokens.tolist() == [[1, 3], [5, 0]] and mask.tolist() == [[False, True], [True, False]]
    assert collate.__code__.co_filename == str(root / "sesame-finetune" / "dataloaders.py")  # tracebacks point there


def test_community_items_are_the_padded_samples():
    step = _steps(512, 1)[0]
    for batch, _ in step.padded:
        items = cc.community_items(batch)
        assert len(items) == batch.num_samples
        # their collate_fn appends the EOS frame that our rows already hold
        assert sum(i["audio"].shape[1] + 1 for i in items) == batch.num_frames
        assert all(i["audio"].shape[0] == ARGS.audio_num_codebooks for i in items)
        assert sum(len(i["text"]) for i in items) + batch.num_frames == batch.num_rows


def test_community_code_option_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match=r"--community-code: .*missing is not a directory"):
        tt.main(["--model", "micro", "--device", "cpu", "--community-code", str(tmp_path / "missing")])
