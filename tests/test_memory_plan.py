"""The memory planner against measured peaks (issue 11, item 5): CPU, micro and tiny configs.

Each case trains two real optimizer steps of a recipe configuration (memory.measure.measure_peak,
the loop's own step code) and compares the measured peak of allocated bytes with the plan. The
grid makes activations matter: full finetune / LoRA / QLoRA, activation checkpointing on and off,
fp32 and bf16 autocast, two micro-batch sizes, gradient accumulation. On these small models the
logits dominate the peak, so the per-layer model is also checked on its own against the tensors
autograd saves (planted bugs: dropping the decoder's logits fails the peak tests, dropping the MLP's
saved tensors fails the saved-tensor test).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from csm_adapt.cli import cli
from csm_adapt.config.recipe import load_recipe
from csm_adapt.memory.advice import CARDS, fits, needed_on_card
from csm_adapt.memory.measure import measure_peak
from csm_adapt.memory.params import model_facts, optimizer_state_bytes
from csm_adapt.memory.plan import plan, plan_memory, workload_of
from csm_adapt.model.config import MODEL_CONFIGS

REPO = Path(__file__).parents[1]
DEMO = REPO / "recipes" / "demo.toml"
TOLERANCE = 0.15

LORA = ('adapter.name="lora"',)
QLORA = ('adapter.name="qlora"', 'train.precision="bf16"')
BF16 = ('train.precision="bf16"',)
AC = ("train.activation_checkpointing=true",)


def rows(micro: int, step: int | None = None, max_rows: int = 512) -> tuple[str, ...]:
    return (f"data.max_rows={max_rows}", f"train.rows_per_step={step or micro}", f"train.rows_per_micro_batch={micro}")


# (id, overrides): uneven on purpose; each id names what it exercises.
CASES = {
    "micro-full-fp32-512": rows(512),
    "micro-full-bf16-ac-1024-accum2": (*BF16, *AC, *rows(512, 1024)),
    "micro-lora-fp32-1024": (*LORA, *rows(1024)),
    "micro-qlora-bf16-ac-512": (*QLORA, *AC, *rows(512)),
    "tiny-lora-bf16-frozenbf16-512": ('model.config="tiny"', *LORA, *BF16, 'train.frozen_dtype="bf16"', *rows(512)),
}


def recipe(*overrides: str):
    return load_recipe(DEMO, ("train.device=cpu", *overrides))


@functools.cache
def measured(case: str) -> int:
    return measure_peak(recipe(*CASES[case]), steps=2).peak_bytes


@pytest.mark.parametrize("case", list(CASES))
def test_predicted_peak_is_within_15_percent_of_the_measured_peak(case):
    predicted = plan_memory(recipe(*CASES[case]), "cpu")
    peak = measured(case)
    assert abs(predicted.total - peak) <= TOLERANCE * peak, (
        f"{case}: predicted {predicted.total / 2**20:.1f} MiB at {predicted.phase}, measured {peak / 2**20:.1f} MiB"
    )


def test_activations_alone_are_predicted_where_they_dominate():
    """The full strategy (every frame through the decoder) at 1024 rows on micro: activations are most
    of the peak; measured minus what the plan counts exactly (weights, gradients, states) is checked."""
    r = recipe('loss={strategy="full"}', *rows(1024))
    p = plan_memory(r, "cpu")
    assert p.activations + p.temporaries > 0.8 * p.total
    peak = measure_peak(r, steps=2).peak_bytes
    exact = p.weights + p.gradients + p.optimizer_states
    assert abs((p.activations + p.temporaries) - (peak - exact)) <= TOLERANCE * (peak - exact)


def test_a_plan_without_the_decoder_term_misses_the_measurement():
    """The grid can fail: dropping the depth decoder's activations from the model (a planted bug)
    puts a decoder-heavy case outside the tolerance."""
    r = recipe(*CASES["micro-lora-fp32-1024"])
    workload = workload_of(r, "cpu")
    facts = model_facts(MODEL_CONFIGS["micro"], r.adapter)
    from csm_adapt.memory.activations import activation_blocks

    blocks = [b for b in activation_blocks(facts, workload.shapes()) if b.part != "decoder"]
    peak = measured("micro-lora-fp32-1024")
    assert abs(plan(facts, workload).total - peak) <= TOLERANCE * peak
    assert abs(plan(facts, workload, blocks).total - peak) > TOLERANCE * peak


@pytest.mark.parametrize(
    "overrides",
    [(), LORA, (*LORA, *BF16, 'train.frozen_dtype="bf16"'), QLORA],
    ids=["full", "lora", "lora-bf16", "qlora"],
)
def test_meta_counts_equal_the_real_model(overrides):
    """Bytes by dtype, trainable and frozen, as on a real micro model with the adapter applied (NF4 included)."""
    import torch

    from csm_adapt.memory.measure import live_bytes
    from csm_adapt.model.checkpoint import build_model
    from csm_adapt.training.adapters import apply_adapter

    r = recipe(*overrides)
    facts = model_facts(MODEL_CONFIGS["micro"], r.adapter, r.train.frozen_dtype)
    model = build_model("micro")
    if r.adapter is not None:
        apply_adapter(model, r.adapter, torch.bfloat16 if r.train.frozen_dtype == "bf16" else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert facts.trainable_numel == sum(p.numel() for p in trainable)
    assert sum(facts.trainable.values()) == live_bytes(trainable)
    assert sum(facts.frozen.values()) == live_bytes(frozen)
    assert facts.gradient_bytes == 4 * facts.trainable_numel
    if overrides == QLORA:
        assert set(facts.frozen) == {"nf4", "float32"}


def test_csm_1b_counts():
    args = MODEL_CONFIGS["csm-1b"]
    full = model_facts(args, None)
    assert 1.5e9 < full.trainable_numel < 1.7e9 and full.trainable == {"float32": 4 * full.trainable_numel}
    assert optimizer_state_bytes(full, "adamw") == 8 * full.trainable_numel + 4 * len(full.trainable_numels)
    eight = optimizer_state_bytes(full, "adamw8bit")
    assert 2 * full.trainable_numel < eight < 2.1 * full.trainable_numel
    lora = recipe('model.config="csm-1b"', *LORA, *BF16, 'train.frozen_dtype="bf16"')
    facts = model_facts(args, lora.adapter, "bf16")
    bb, dec = args.backbone, args.decoder

    def per_layer(f):  # r16 on q, k, v, o, w1, w2, w3: r * (in + out) each
        kv = f.num_kv_heads * f.head_dim
        return 16 * (2 * f.embed_dim * 2 + (f.embed_dim + kv) * 2 + (f.embed_dim + f.intermediate_dim) * 3)

    assert facts.trainable_numel == bb.num_layers * per_layer(bb) + dec.num_layers * per_layer(dec)
    assert facts.frozen == {"bfloat16": 2 * full.trainable_numel}
    qlora = model_facts(args, recipe('model.config="csm-1b"', *QLORA).adapter)
    nf4 = [x for x in qlora.linears.values() if x.weight_dtype == "nf4"]
    assert len(nf4) == 7 * (bb.num_layers + dec.num_layers)
    # 4 bits per value, an int8 scale per 64 values, a bf16 factor per 256 scales, the table and mean.
    assert qlora.frozen["nf4"] == sum(
        x.weight_numel // 2 + x.weight_numel // 64 + 2 * (x.weight_numel // 64 // 256) + 34 for x in nf4
    )


def test_memory_command_prints_the_split_the_cards_and_json(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["memory", str(DEMO), "train.device=cpu"])
    assert result.exit_code == 0, result.output
    for word in ("weights", "gradients", "optimizer states", "activations", "total", "cards: 8 GB fits"):
        assert word in result.output
    result = runner.invoke(cli, ["memory", str(DEMO), "--json", "--device", "cpu", *LORA])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    p = out["plan"]
    parts = p["gradients"] + p["optimizer_states"] + p["activations"] + p["temporaries"]
    weights = sum(p["weights"]["trainable"].values()) + sum(p["weights"]["frozen"].values())
    assert p["total_bytes"] == weights + parts and p["cuda_overhead"] == 0
    assert out["cards"] == {card: True for card, _ in CARDS} and out["advice"] == []
    bad = runner.invoke(cli, ["memory", str(DEMO), "train.optimizer=sgd"])
    assert bad.exit_code == 2 and "train.optimizer" in bad.output


def test_a_recipe_that_does_not_fit_gets_a_change_that_fits():
    """csm-1b full finetune at 8192 rows: not on a 24 GB card; the suggested change, planned again, fits."""
    result = CliRunner().invoke(cli, ["memory", str(REPO / "recipes" / "french.toml"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["cards"]["24 GB"] is False and out["cards"]["80 GB"] is True
    [advice] = [a for a in out["advice"] if a["card"] == "24 GB"]
    assert advice["fix"] and advice["options"][0]["change"] == "activation checkpointing"
    extra = [o for change in advice["fix"] for o in change["overrides"]]
    fixed = plan_memory(load_recipe(REPO / "recipes" / "french.toml", extra))
    assert fits(fixed, dict(CARDS)["24 GB"]) and needed_on_card(fixed) < out["needed_on_card"]


def autograd_saved_bytes(r) -> int:
    """Bytes of the distinct storages autograd saves in one training forward of the recipe (no parameters)."""
    import torch

    from csm_adapt.memory.measure import synthetic_batch
    from csm_adapt.model.checkpoint import build_model
    from csm_adapt.training.adapters import decide_trainable
    from csm_adapt.training.losses import loss_parts
    from csm_adapt.training.step import autocast, forward_batch

    workload = workload_of(r, "cpu")
    model = build_model(r.model.config)
    decide_trainable(r, model)
    model.train()
    batch = synthetic_batch(workload, model.args, 0)
    mask = r.loss.create().select_decoder_frames(batch.target_mask, torch.Generator().manual_seed(0))
    params = {p.untyped_storage().data_ptr() for p in model.parameters() if type(p.data) is torch.Tensor}
    seen: dict[int, int] = {}

    def pack(t):
        if type(t) is torch.Tensor and t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(torch.device("cpu"), workload.precision):
            loss_parts(forward_batch(model, batch, mask, torch.device("cpu")))
    return sum(seen.values())


@pytest.mark.parametrize(
    "overrides",
    [
        ('model.config="tiny"', "loss.decoder_fraction=0.015625", *rows(512)),
        ('model.config="tiny"', "loss.decoder_fraction=0.015625", *LORA, *BF16, *rows(512)),
        ('model.config="tiny"', "loss.decoder_fraction=0.015625", *QLORA, *rows(512)),
    ],
    ids=["tiny-full-fp32", "tiny-lora-bf16", "tiny-qlora-bf16"],
)
def test_saved_activations_match_what_autograd_saves(overrides):
    """Layer by layer the model's saved tensors are most of what autograd keeps (the decoder's share is
    small here: 1/64 of the frames), checked against autograd's own saved-tensor hooks."""
    from csm_adapt.memory.activations import activation_blocks

    r = recipe(*overrides)
    workload = workload_of(r, "cpu")
    blocks = activation_blocks(model_facts(MODEL_CONFIGS["tiny"], r.adapter, r.train.frozen_dtype), workload.shapes())
    predicted = sum(b.saved for b in blocks)
    layers = sum(b.saved for b in blocks if b.name.startswith("backbone.layers."))
    saved = autograd_saved_bytes(r)
    assert layers > 0.5 * predicted
    assert abs(predicted - saved) <= TOLERANCE * saved, (
        f"predicted {predicted / 2**20:.1f} MiB, saved {saved / 2**20:.1f}"
    )


def test_memory_benchmark_reports_every_variant_and_what_it_measured(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_benchmark", REPO / "benchmarks" / "memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "report.json"
    report = bench.main(
        ["--model", "micro", "--device", "cpu", "--rows", "512", "--measure", "qlora-ac", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == report
    assert list(report["results"]) == ["full", "full-ac", "lora", "lora-ac", "qlora", "qlora-ac"]
    measured = {name for name, r in report["results"].items() if "measured_bytes" in r}
    assert measured == {"qlora-ac"}
    r = report["results"]["qlora-ac"]
    assert abs(r["error"]) <= TOLERANCE and r["seconds_per_step"] > 0 and r["split"]["workload"]["checkpointing"]
    assert report["results"]["full"]["split"]["workload"]["optimizer"] == "adamw8bit"
    assert report["machine"]["torch"] and "lora_speedup_over_full" not in report
