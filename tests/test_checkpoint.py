"""Checkpoint loading, saving and conversion: layouts, round trips, hub cache, error messages, CLI."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

import csm_adapt.model.checkpoint as checkpoint
from csm_adapt.cli import cli
from csm_adapt.commands.convert import convert as convert_command
from csm_adapt.errors import CheckpointError, ConfigError
from csm_adapt.model.checkpoint import build_model, convert, load_model, save_model
from csm_adapt.model.config import MODEL_CONFIGS, ModelArgs
from csm_adapt.model.csm import CSM
from csm_adapt.model.llama import apply_rope, rope_frequencies
from csm_adapt.model.transformers_layout import to_transformers


def reference_csm_1b_shapes() -> dict[str, tuple[int, ...]]:
    """The 187 tensors of the published checkpoint, written from the reference (§1), not from our model."""
    shapes = {
        "text_embeddings.weight": (128256, 2048),
        "audio_embeddings.weight": (65632, 2048),
        "projection.weight": (1024, 2048),
        "codebook0_head.weight": (2051, 2048),
        "audio_head": (31, 1024, 2051),
        "backbone.norm.scale": (2048,),
        "decoder.norm.scale": (1024,),
    }
    # (prefix, layers, width, kv width = kv heads * head dim, MLP width)
    for prefix, layers, d, kv, mlp in [("backbone", 16, 2048, 8 * 64, 8192), ("decoder", 4, 1024, 2 * 128, 8192)]:
        for i in range(layers):
            p = f"{prefix}.layers.{i}."
            shapes |= {
                p + "attn.q_proj.weight": (d, d),
                p + "attn.k_proj.weight": (kv, d),
                p + "attn.v_proj.weight": (kv, d),
                p + "attn.output_proj.weight": (d, d),
                p + "mlp.w1.weight": (mlp, d),
                p + "mlp.w2.weight": (d, mlp),
                p + "mlp.w3.weight": (mlp, d),
                p + "sa_norm.scale": (d,),
                p + "mlp_norm.scale": (d,),
            }
    return shapes


def assert_same_weights(a: CSM, b: CSM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.fixture
def micro(micro_model):
    return micro_model  # tests/conftest.py: build_model("micro", seed=3)


@pytest.fixture
def saved(micro, tmp_path):
    return save_model(micro, tmp_path / "ckpt")


def test_csm_1b_has_the_reference_names_and_shapes():
    with torch.device("meta"):
        model = CSM(MODEL_CONFIGS["csm-1b"])
    expected = reference_csm_1b_shapes()
    assert len(expected) == 187
    assert {n: tuple(t.shape) for n, t in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == 1_552_791_552


def test_build_model_is_seeded_and_rejects_unknown_names():
    assert_same_weights(build_model("micro", seed=1), build_model("micro", seed=1))
    a, b = build_model("micro", seed=1), build_model("micro", seed=2)
    assert not torch.equal(a.projection.weight, b.projection.weight)
    assert build_model(MODEL_CONFIGS["micro"], seed=1).args == MODEL_CONFIGS["micro"]
    with pytest.raises(ConfigError, match="'nano'.*known: \\['csm-1b', 'micro', 'tiny'\\]"):
        build_model("nano")


def test_original_layout_files(micro, saved):
    assert sorted(os.listdir(saved)) == ["config.json", "model.safetensors"]
    assert json.loads((saved / "config.json").read_text()) == {
        "backbone_flavor": "micro-64",
        "decoder_flavor": "micro-32",
        "text_vocab_size": 1024,
        "audio_vocab_size": 2051,
        "audio_num_codebooks": 32,
    }
    with safe_open(saved / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(micro.state_dict())


def test_reference_from_pretrained_reads_the_original_layout(micro, saved):
    """What the reference code does: a PyTorchModelHubMixin whose dataclass config is config.json."""
    from huggingface_hub import PyTorchModelHubMixin

    @dataclasses.dataclass
    class RefModelArgs:
        backbone_flavor: str
        decoder_flavor: str
        text_vocab_size: int
        audio_vocab_size: int
        audio_num_codebooks: int

    class RefModel(CSM, PyTorchModelHubMixin):
        def __init__(self, config: RefModelArgs):
            super().__init__(ModelArgs(**dataclasses.asdict(config)))

    ref = RefModel.from_pretrained(saved)
    assert ref.args == micro.args
    assert_same_weights(micro, ref)


def test_round_trips_through_both_layouts_are_bit_exact(micro, saved, tmp_path):
    first = load_model(saved)
    assert_same_weights(micro, first)
    assert not first.training
    hf_dir = convert(saved, tmp_path / "hf", to="transformers")
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "csm"
    with safe_open(hf_dir / "model.safetensors", "pt") as f:
        q = f.get_tensor("backbone_model.layers.0.self_attn.q_proj.weight")
    assert not torch.equal(q, micro.backbone.layers[0].attn.q_proj.weight)  # rows permuted for rotate-half RoPE
    assert_same_weights(micro, load_model(hf_dir))
    back = convert(hf_dir, tmp_path / "sesame", to="sesame")
    assert json.loads((back / "config.json").read_text()) == micro.args.to_dict()
    assert_same_weights(micro, load_model(back))


def rotate_half_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE as transformers' Llama applies it (rotate-half), written independently: x [S, H, D], angles [S, D/2]."""
    cos, sin = (torch.cat([t, t], dim=-1)[:, None] for t in (angles.cos(), angles.sin()))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def test_transformers_layout_keeps_every_attention_score_under_rotate_half_rope(micro, saved, tmp_path):
    # The q and k rows of the transformers file, used with rotate-half RoPE, give the attention scores
    # our rows give with interleaved RoPE: in every layer and head, backbone and decoder (no transformers needed).
    hf_dir = convert(saved, tmp_path / "hf", to="transformers")
    with safe_open(hf_dir / "model.safetensors", "pt") as f:
        hf = {k: f.get_tensor(k) for k in f.keys()}
    seq = 7
    for part, hf_prefix in (("backbone", "backbone_model.layers"), ("decoder", "depth_decoder.model.layers")):
        flavor = getattr(micro, part).flavor
        h, kv, d = flavor.num_heads, flavor.num_kv_heads, flavor.head_dim
        angles = torch.outer(torch.arange(seq, dtype=torch.float32), rope_frequencies(flavor))
        x = torch.randn(seq, flavor.embed_dim, generator=torch.Generator().manual_seed(0))
        for i, layer in enumerate(getattr(micro, part).layers):
            q = apply_rope((x @ layer.attn.q_proj.weight.T).view(1, seq, h, d), angles.cos()[None], angles.sin()[None])[
                0
            ]
            k = apply_rope(
                (x @ layer.attn.k_proj.weight.T).view(1, seq, kv, d), angles.cos()[None], angles.sin()[None]
            )[0]
            hq = rotate_half_rope((x @ hf[f"{hf_prefix}.{i}.self_attn.q_proj.weight"].T).view(seq, h, d), angles)
            hk = rotate_half_rope((x @ hf[f"{hf_prefix}.{i}.self_attn.k_proj.weight"].T).view(seq, kv, d), angles)
            ours = torch.einsum("shd,thd->hst", q, k.repeat_interleave(h // kv, dim=1))
            theirs = torch.einsum("shd,thd->hst", hq, hk.repeat_interleave(h // kv, dim=1))
            assert ours.abs().max() > 1e-3, f"{part} layer {i}: scores too small to compare"
            torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5, msg=f"{part} layer {i}")


def test_tied_audio_embeddings_of_a_transformers_checkpoint_must_agree(micro, tmp_path):
    hf_state, hf_config = to_transformers(micro.state_dict(), micro.args)
    table = hf_state["depth_decoder.model.embed_tokens.weight"]
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    twin = "backbone_model.embed_tokens.embed_audio_tokens.weight"
    save_file({**hf_state, twin: table.clone()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert_same_weights(micro, load_model(tmp_path))  # both copies, equal: fine

    other = table.clone()
    other[5, 3] += 1.0
    save_file({**hf_state, twin: other}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"{twin} and depth_decoder.model.embed_tokens.weight differ"):
        load_model(tmp_path)


def test_dtypes(micro, tmp_path):
    half = build_model("micro", seed=3, dtype=torch.bfloat16)
    with safe_open(save_model(half, tmp_path / "fp32") / "model.safetensors", "pt") as f:
        assert f.get_tensor("audio_head").dtype == torch.float32
    with safe_open(save_model(half, tmp_path / "bf16", dtype=None) / "model.safetensors", "pt") as f:
        assert f.get_tensor("audio_head").dtype == torch.bfloat16
    loaded = load_model(tmp_path / "fp32", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert_same_weights(half, loaded)


def test_ckpt_pt_loads(micro, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(micro.args.to_dict()))
    torch.save(micro.state_dict(), tmp_path / "ckpt.pt")
    assert_same_weights(micro, load_model(tmp_path))
    assert_same_weights(micro, load_model(tmp_path / "ckpt.pt"))


def test_ckpt_pt_without_config_is_csm_1b(micro, tmp_path):
    # The first release shipped ckpt.pt alone; its config is csm-1b, which a micro state dict is not.
    torch.save(micro.state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(
        CheckpointError,
        match=r"ckpt\.pt \(config llama-1B/llama-100M\): tensor 'audio_head' has shape \(31, 32, 2051\), "
        r"the config expects \(31, 1024, 2051\)",
    ):
        load_model(tmp_path)


def test_sharded_transformers_checkpoint_loads(micro, tmp_path):
    hf_state, hf_config = to_transformers(micro.state_dict(), micro.args)
    names = sorted(hf_state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: hf_state[k].contiguous() for k in keys}, tmp_path / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    assert_same_weights(micro, load_model(tmp_path))

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="index.json: lists shard model-00002-of-00002.safetensors, which is"):
        load_model(tmp_path)


HUB_SCRIPT = """
import sys, torch
from csm_adapt.model.checkpoint import load_model
from csm_adapt.errors import CheckpointError
model = load_model("someone/csm-micro")
torch.save(model.state_dict(), sys.argv[1])
try:
    load_model("someone/not-cached")
except CheckpointError as e:
    print("ERROR:", e)
"""


def test_hub_id_loads_from_an_offline_cache(micro, tmp_path):
    snapshot = tmp_path / "hub" / "models--someone--csm-micro" / "snapshots" / "0123abcd"
    save_model(micro, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    out = tmp_path / "state.pt"
    result = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    state = torch.load(out, weights_only=True)
    assert all(torch.equal(state[n], t) for n, t in micro.state_dict().items())
    assert "ERROR: someone/not-cached: cannot fetch from the Hugging Face hub" in result.stdout


def write_original(directory: Path, state: dict, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_error_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not a CSM checkpoint: expected config.json"):
        load_model(tmp_path)


def test_error_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="config.json: model_type 'llama' is not a CSM checkpoint"):
        load_model(tmp_path)


def test_error_unknown_config_key(micro, tmp_path):
    config = {**micro.args.to_dict(), "dropout": 0.1}
    write_original(tmp_path, micro.state_dict(), config)
    with pytest.raises(CheckpointError, match=r"config.json: unknown model config key\(s\) \['dropout'\]"):
        load_model(tmp_path)


def test_error_missing_tensor(micro, tmp_path):
    state = {n: t for n, t in micro.state_dict().items() if n != "decoder.layers.1.mlp.w2.weight"}
    write_original(tmp_path, state, micro.args.to_dict())
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors .*missing tensor 'decoder.layers.1.mlp.w2.weight' of shape \(32, 64\)",
    ):
        load_model(tmp_path)


def test_error_unexpected_tensor(micro, tmp_path):
    # The community bug: cache buffers saved with the weights.
    state = {**micro.state_dict(), "backbone.layers.0.attn.kv_cache.k_cache": torch.zeros(2, 3)}
    write_original(tmp_path, state, micro.args.to_dict())
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor 'backbone.layers.0.attn.kv_cache.k_cache' of shape \(2, 3\)"
    ):
        load_model(tmp_path)


def test_error_shape_mismatch_names_both_shapes(micro, tmp_path):
    state = {**micro.state_dict(), "codebook0_head.weight": torch.zeros(2048, 64)}
    write_original(tmp_path, state, micro.args.to_dict())
    with pytest.raises(
        CheckpointError, match=r"tensor 'codebook0_head.weight' has shape \(2048, 64\), the config expects \(2051, 64\)"
    ):
        load_model(tmp_path)


def test_error_nonexistent_path(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}/nope: no such checkpoint"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="runs/a/b: no such checkpoint file or directory"):
        load_model("runs/a/b")


def test_failed_save_keeps_the_previous_checkpoint(micro, saved, monkeypatch):
    def crash(state, path, metadata):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(build_model("micro", seed=4), saved)
    assert sorted(os.listdir(saved)) == ["config.json", "model.safetensors"]
    assert_same_weights(micro, load_model(saved))


def test_cli_convert(micro, saved, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(convert_command, ["--help"]).output
    assert "--to [transformers|sesame]" in help_text and "ckpt.pt" in help_text
    result = runner.invoke(convert_command, [str(saved), str(tmp_path / "hf"), "--to", "transformers"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "csm"
    args = [str(tmp_path / "hf"), str(tmp_path / "bf16"), "--to", "sesame", "--dtype", "bfloat16"]
    result = runner.invoke(convert_command, args)
    assert result.exit_code == 0, result.output
    bf16 = build_model("micro", seed=3, dtype=torch.bfloat16)
    assert_same_weights(bf16, load_model(tmp_path / "bf16", dtype=torch.bfloat16))
    bad = runner.invoke(convert_command, [str(tmp_path / "nope"), str(tmp_path / "x"), "--to", "sesame"])
    assert isinstance(bad.exception, CheckpointError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text_vocab_size": "1024"}, r"text_vocab_size: expected a positive integer, got str '1024'"),
        ({"audio_vocab_size": 2051.5}, r"audio_vocab_size: expected a positive integer, got float 2051.5"),
        ({"audio_num_codebooks": -4}, r"audio_num_codebooks: expected a positive integer, got int -4"),
        ({"backbone_flavor": "llama-9000"}, r"backbone_flavor: 'llama-9000' is not a flavor; valid flavors: llama-1B"),
        ({"decoder_flavor": 7}, r"decoder_flavor: 7 is not a flavor"),
    ],
)
def test_a_hostile_config_json_is_named_by_file_and_key(micro, tmp_path, change, message):
    write_original(tmp_path, micro.state_dict(), {**micro.args.to_dict(), **change})
    with pytest.raises(CheckpointError, match=rf"config.json: invalid model config: {message}") as caught:
        load_model(tmp_path)
    assert "TransformerFlavor(" not in str(caught.value)  # the valid names, not the whole table
    result = CliRunner().invoke(cli, ["convert", str(tmp_path), str(tmp_path / "out"), "--to", "transformers"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "config.json: invalid" in result.output


def test_a_hostile_transformers_config_is_named_by_key(micro, tmp_path):
    save_model(micro, tmp_path, layout="transformers")
    config = json.loads((tmp_path / "config.json").read_text())
    config["depth_decoder_config"]["hidden_size"] = "64"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: depth_decoder_config: hidden_size: expected a positive"):
        load_model(tmp_path)


def test_a_plain_pickle_is_refused_as_such(tmp_path):
    import pickle

    (tmp_path / "ckpt.pt").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(CheckpointError, match=r"ckpt.pt: not a torch.save zip file .* never loads pickles"):
        load_model(tmp_path)


def test_checkpoint_files_get_the_umask_mode(micro, tmp_path):
    old = os.umask(0o022)
    try:
        save_model(micro, tmp_path / "m")
    finally:
        os.umask(old)
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "m").iterdir()} == {
        "config.json": 0o644,
        "model.safetensors": 0o644,
    }


def test_convert_carries_the_tokenizer_and_codec_record(micro, saved, tmp_path):
    record = {"text_tokenizer": "offline", "audio_codec": "/models/mimi.safetensors"}
    (saved / "csm_adapt.json").write_text(json.dumps(record))
    hf_dir = convert(saved, tmp_path / "hf", to="transformers")
    assert json.loads((hf_dir / "csm_adapt.json").read_text()) == record
    back = convert(hf_dir / "model.safetensors", tmp_path / "back", to="sesame")  # from a weights file too
    assert json.loads((back / "csm_adapt.json").read_text()) == record
    bare = convert(tmp_path / "back", tmp_path / "bare", to="sesame")
    assert (bare / "csm_adapt.json").is_file()
    (tmp_path / "back" / "csm_adapt.json").unlink()
    assert not (convert(tmp_path / "back", tmp_path / "none", to="sesame") / "csm_adapt.json").exists()
