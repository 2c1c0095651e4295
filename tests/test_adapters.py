"""Adapters: LoRA/DoRA/QLoRA on the model, their files, merging, and training with them."""

import json

import pytest
import torch
from click.testing import CliRunner

from csm_adapt.cli import cli
from csm_adapt.config.recipe import load_recipe
from csm_adapt.errors import ConfigError, CsmAdaptError
from csm_adapt.model.checkpoint import build_model, load_model
from csm_adapt.model.rows import audio_frame_mask, utterance_rows
from csm_adapt.training.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    decide_trainable,
    load_adapted,
    merge_adapter,
    read_weights,
)
from csm_adapt.training.loop import train
from csm_adapt.training.step import autocast
from csm_adapt_plugins.lora_adapter import Lora, LoRALinear, LoraOptions, Qlora, QloraOptions
from runs import KILLER, REPO, read_metrics  # tests/runs.py
from test_train import run_recipe

K = 32


def batch(seed=0):
    """Two samples of uneven length, padded into one batch."""
    g = torch.Generator().manual_seed(seed)
    rows = [
        utterance_rows(torch.randint(0, 1024, (n,), generator=g).tolist(), torch.randint(1, 2048, (K, f), generator=g))
        for n, f in ((5, 9), (3, 4))
    ]
    s = max(len(t) for t, _ in rows)
    tokens = torch.zeros(2, s, K + 1, dtype=torch.long)
    mask = torch.zeros(2, s, K + 1, dtype=torch.bool)
    for i, (t, m) in enumerate(rows):
        tokens[i, : len(t)], mask[i, : len(m)] = t, m
    return tokens, mask, audio_frame_mask(mask)


def logits(model, b=None):
    out = model(*(b or batch()))
    return torch.cat([out.c0_logits.flatten(), out.decoder_logits.flatten()])


def model(std=0.3):
    torch.manual_seed(0)
    m = build_model("micro")
    m.init_weights(std=std)  # large weights: differences show
    return m


def trained_like(adapted, seed=1, scale=0.5):
    """Give every LoRA B (and DoRA magnitude) non-zero values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapted.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * scale)
                if m.lora_magnitude is not None:
                    m.lora_magnitude.mul_(1 + 0.2 * torch.rand(m.lora_magnitude.shape, generator=g))
    return adapted


VARIANTS = {
    "lora": LoraOptions(rank=4, alpha=8),
    "rslora": LoraOptions(rank=4, alpha=8, rslora=True),
    "dora": LoraOptions(rank=4, alpha=8, dora=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_at_init_leaves_outputs_unchanged(variant):
    base = model()
    adapted = model()
    Lora(VARIANTS[variant]).apply(adapted)
    with torch.no_grad():
        a, b = logits(base), logits(adapted)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    # ... and the check can fail: once B moves, so do the outputs.
    with torch.no_grad():
        assert not torch.allclose(a, logits(trained_like(adapted)), atol=1e-3)


def test_only_adapter_weights_and_saved_modules_get_gradients():
    m = model()
    options = LoraOptions(
        rank=4, targets=("*.layers.*.attn.q_proj", "projection"), modules_to_save=("text_embeddings",)
    )
    Lora(options).apply(m)
    trained_like(m)
    logits(m).square().mean().backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {f"{part}.layers.{i}.attn.q_proj.lora_{x}" for part in ("backbone", "decoder") for i in (0, 1)
                for x in "AB"} | {"projection.lora_A", "projection.lora_B", "text_embeddings.weight"}  # fmt: skip
    assert with_grad == expected
    assert {n for n, p in m.named_parameters() if p.requires_grad} == expected
    # The base weights keep their original names beside the adapter's.
    assert "backbone.layers.0.attn.q_proj.weight" in dict(m.named_parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_merged_model_gives_the_unmerged_logits(variant):
    m = model(std=0.05)
    Lora(VARIANTS[variant]).apply(m)
    trained_like(m, scale=0.02)  # an update of the size training makes: outputs move by ~10 %
    m.eval()
    with torch.no_grad():
        before = logits(m)
        Lora(VARIANTS[variant]).merge(m)
        after = logits(m)
        assert (before - logits(model(std=0.05))).abs().max() > 0.05 * before.abs().max()
    assert set(m.state_dict()) == set(build_model("micro").state_dict())  # a plain CSM again
    assert (before - after).abs().max() <= 1e-5


def test_activation_checkpointing_gives_the_same_gradients_with_dropout():
    grads = []
    for checkpointing in (False, True):
        m = model(std=0.05)
        torch.manual_seed(3)
        Lora(LoraOptions(rank=4, dropout=0.1, dora=True)).apply(m)
        trained_like(m)
        m.train()
        m.backbone.checkpoint_layers = m.decoder.checkpoint_layers = checkpointing
        torch.manual_seed(4)  # the same dropout masks; recomputation must redraw them identically
        logits(m).square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_qlora_forward_matches_the_dequantised_model():
    q = model(std=0.05)
    Qlora(QloraOptions(rank=4)).apply(q)
    trained_like(q)
    assert type(q.backbone.layers[0].mlp.w1.weight).__name__ == "NF4Tensor"
    # The dequantised model: every NF4 weight replaced by its dequantised values (plus LoRA, merged).
    dequantised = model(std=0.05)
    Lora(LoraOptions(rank=4)).apply(dequantised)
    with torch.no_grad():
        for mq, md in zip(q.modules(), dequantised.modules()):
            if isinstance(mq, LoRALinear):
                md.weight.copy_(mq.base_weight())
                md.lora_A.copy_(mq.lora_A)
                md.lora_B.copy_(mq.lora_B)
        b = batch()
        # fp32 compute: NF4 is dequantised exactly, so only summation order differs.
        assert (logits(q, b) - logits(dequantised, b)).abs().max() <= 1e-5
        # bf16 compute, as QLoRA trains: within bf16 rounding of the logits' scale.
        with autocast(torch.device("cpu"), "bf16"):
            lq, ld = logits(q, b).float(), logits(dequantised, b).float()
        assert (lq - ld).abs().max() <= 0.05 * ld.abs().max()
    # 4 bits are not the fp32 weights: quantisation moved them, by at most half the widest NF4 step
    # (0.7230 -> 1.0) of a block's absmax, 0.139, plus the rounding of the 8-bit block scales.
    base = model(std=0.05).backbone.layers[0].mlp.w1.weight
    w = q.backbone.layers[0].mlp.w1.base_weight()
    assert 0 < (w - base).abs().max() <= 0.16 * base.abs().max()


def test_recipe_errors_name_the_key(tmp_path, demo_dataset):
    _, recipe = run_recipe(tmp_path, demo_dataset, ['adapter.name="lora"', "adapter.rank=4"])
    assert recipe.adapter.options.rank == 4
    with pytest.raises(ConfigError, match="adapter.ranks: unknown key; valid keys: rank, alpha"):
        run_recipe(tmp_path, demo_dataset, ['adapter.name="lora"', "adapter.ranks=4"])
    with pytest.raises(ConfigError, match='adapter.name: unknown adapter "lorra"; available: lora, qlora'):
        run_recipe(tmp_path, demo_dataset, ['adapter.name="lorra"'])
    with pytest.raises(ConfigError, match="adapter: with an adapter, the adapter decides what trains"):
        run_recipe(tmp_path, demo_dataset, ['adapter.name="lora"', 'train.trainable="decoder"'])
    with pytest.raises(ConfigError, match='frozen_dtype = "bf16" needs train.precision = "bf16"'):
        run_recipe(tmp_path, demo_dataset, ['adapter.name="lora"', 'train.frozen_dtype="bf16"'])
    with pytest.raises(ConfigError, match='adapter.targets: "\\*.attn.wq" matches no linear module'):
        Lora(LoraOptions(targets=("*.attn.wq",))).apply(model())


ADAPTER = [
    'adapter.name="lora"', "adapter.rank=4", 'adapter.modules_to_save=["codebook0_head"]', "train.lr=1e-2",
    "train.steps=6", "train.val_every=3", "train.checkpoint_every=4",
]  # fmt: skip


def test_adapter_checkpoints_resume_bit_exactly(tmp_path, demo_dataset):
    whole_dir, whole = run_recipe(tmp_path / "whole", demo_dataset, [*ADAPTER, "adapter.dropout=0.1"])
    train(whole)

    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "killer.py").write_text(KILLER)
    extra = '[[loggers]]\nname = "killer"\nat_step = 6\n'
    killed_dir, killed = run_recipe(
        tmp_path / "killed", demo_dataset, [*ADAPTER, "adapter.dropout=0.1"], plugins=["killer.py"], extra=extra
    )
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    step = killed_dir / "checkpoints" / "step-000004"
    # Only the adapter (+ codebook0_head) and the trainer state: no copy of the frozen base.
    assert sorted(p.name for p in step.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "csm_adapt.json", "trainer.pt"]
    saved = read_weights(step)
    assert "codebook0_head.weight" in saved and "backbone.layers.0.attn.q_proj.lora_B" in saved
    assert not any(name.endswith("q_proj.weight") for name in saved)

    resumed = load_recipe(killed_dir.parent / "recipe.toml", [*ADAPTER, "adapter.dropout=0.1", "loggers.1.at_step=0"])
    train(resumed, resume=True)
    a, b = read_weights(whole_dir / "checkpoints" / "final"), read_weights(killed_dir / "checkpoints" / "final")
    assert a.keys() == b.keys()
    for name, x in a.items():
        assert torch.equal(x, b[name]), name
    assert read_metrics(whole_dir, "train/loss") == read_metrics(killed_dir, "train/loss")
    # It trained: the adapter moved and the loss fell.
    assert a["backbone.layers.0.attn.q_proj.lora_B"].abs().max() > 0
    losses = read_metrics(whole_dir, "train/loss")
    assert losses[6] < losses[1]

    # The adapter directory alone rebuilds the trained model (base from adapter.json); merged = unmerged.
    adapted, spec = load_adapted(whole_dir / "checkpoints" / "final")
    assert spec.ref.name == "lora" and spec.base.config == "micro" and spec.base.checkpoint is None
    with torch.no_grad():
        before = logits(adapted)
        merged = merge_adapter(adapted)
        assert (before - logits(merged)).abs().max() <= 1e-5
    assert json.loads((whole_dir / "checkpoints" / "final" / ADAPTER_CONFIG).read_text())["adapter"]["rank"] == 4

    # The commands: merge to a plain checkpoint (same logits), speak with the adapter unmerged.
    final = str(whole_dir / "checkpoints" / "final")
    result = CliRunner().invoke(cli, ["merge", final, str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        assert (before - logits(load_model(tmp_path / "merged"))).abs().max() <= 1e-5
    out = tmp_path / "out.wav"
    result = CliRunner().invoke(cli, ["generate", "--adapter", final, "--text", "Bonjour.", "--max-audio-ms", "160",
                                      "--seed", "0", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_adapter_with_bf16_frozen_base_trains(tmp_path, demo_dataset):
    run_dir, recipe = run_recipe(
        tmp_path,
        demo_dataset,
        [*ADAPTER, 'adapter.name="qlora"', 'train.precision="bf16"', 'train.frozen_dtype="bf16"', "train.steps=2"],
        extra='[samples]\nevery = 2\nmax_audio_ms = 240\n[[samples.prompts]]\ntext = "Bonjour."\n',
    )
    final = train(recipe)
    adapted, _ = load_adapted(final)
    assert type(adapted.backbone.layers[0].attn.q_proj.weight).__name__ == "NF4Tensor"
    assert torch.isfinite(torch.tensor(list(read_metrics(run_dir, "train/loss").values()))).all()
    assert (run_dir / "samples" / "step-000002" / "0.wav").is_file()  # generation over the bf16 base


def test_adapters_train_under_ddp_not_fsdp():
    recipe = load_recipe(REPO / "recipes" / "demo.toml", ['adapter.name="lora"', 'train.parallel="fsdp"'])
    with pytest.raises(ConfigError, match='adapter. trains with train.parallel = "ddp", not "fsdp"'):
        decide_trainable(recipe, build_model("micro"), distributed=True)
    m = build_model("micro")  # one process: no wrapping, so `parallel` does not apply
    assert decide_trainable(recipe, m).ref.name == "lora"
    assert any(p.requires_grad for p in m.parameters()) and not all(p.requires_grad for p in m.parameters())


def test_adapter_on_a_model_that_has_one_is_refused():
    m = model()
    Lora(LoraOptions()).apply(m)
    with pytest.raises(CsmAdaptError, match="already applied"):
        Lora(LoraOptions()).apply(m)


def test_peft_export_loads_in_transformers_with_our_merged_logits(tmp_path):
    import click
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import CsmForConditionalGeneration, MimiConfig

    from csm_adapt.config.schema import AdapterRef
    from csm_adapt.model.checkpoint import save_model
    from csm_adapt.plugin_engine.manager import load_plugins
    from csm_adapt.plugin_engine.registries import collect
    from csm_adapt.training.adapters import AdapterSpec, BaseModel, apply_adapter

    base = model(std=0.05)
    save_model(base, tmp_path / "base")
    save_model(base, tmp_path / "base-hf", layout="transformers")
    adapted = load_model(tmp_path / "base")
    options = LoraOptions(rank=4, alpha=8, dora=True, targets=(*LoraOptions().targets, "projection"),
                          modules_to_save=("codebook0_head",))  # fmt: skip
    apply_adapter(adapted, AdapterRef("lora", options, Lora))
    trained_like(adapted, scale=0.05)
    with torch.no_grad():
        adapted.codebook0_head.weight.mul_(1.5)
    AdapterSpec(AdapterRef("lora", options, Lora), BaseModel("micro", str(tmp_path / "base"))).write(
        tmp_path / "adapter", adapted
    )
    group = click.Group()
    collect(load_plugins(), group)
    result = CliRunner().invoke(group, ["export-peft", str(tmp_path / "adapter"), str(tmp_path / "peft")])
    assert result.exit_code == 0, result.output
    save_model(merge_adapter(adapted), tmp_path / "merged-hf", layout="transformers")

    codec = MimiConfig(num_hidden_layers=1, num_quantizers=K)
    merged = CsmForConditionalGeneration.from_pretrained(tmp_path / "merged-hf", codec_config=codec).eval()
    hf_base = CsmForConditionalGeneration.from_pretrained(tmp_path / "base-hf", codec_config=codec).eval()
    peft = PeftModel.from_pretrained(hf_base, tmp_path / "peft").eval()
    tokens, mask, targets = batch()
    tokens, mask, targets = tokens[:1], mask[:1], targets[:1]
    outs = []
    with torch.no_grad():
        for m in (merged, peft):
            inner = m.base_model.model if m is peft else m
            audio = targets[0][:, None]
            embeds = torch.where(
                audio, inner.backbone_model.embed_tokens(tokens[:, :, :K])[0], inner.embed_text_tokens(tokens[0, :, K])
            )
            labels = torch.where(audio, tokens[0, :, :K], -100)
            out = m(inputs_embeds=embeds[None], labels=labels[None])
            outs.append((out.logits, out.depth_decoder_logits))
    (a, da), (b, db) = outs
    # transformers + PEFT computes our merged model ...
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(db, da, rtol=1e-4, atol=1e-4)
    # ... which the adapter did change (PeftModel wrapped hf_base in place: load the base again).
    plain = CsmForConditionalGeneration.from_pretrained(tmp_path / "base-hf", codec_config=codec).eval()
    with torch.no_grad():
        assert (a - plain(inputs_embeds=embeds[None]).logits).abs().max() > 1e-2
