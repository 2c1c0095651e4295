"""Evaluation: aggregation, objectives, eval prompts, the evaluator engine and the built-in
`stopping` and `quality` evaluators (run for real on espeak-ng speech)."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from csm_adapt.audio_io import SAMPLE_RATE, load_audio
from csm_adapt.config.objective import Objective
from csm_adapt.config.recipe import load_recipe
from csm_adapt.config.schema import EvalConfig, EvaluatorRef
from csm_adapt.errors import ConfigError, CsmAdaptError
from csm_adapt.evaluation.aggregate import bootstrap_interval, summarize
from csm_adapt.evaluation.engine import Evaluation, EvaluatorSet
from csm_adapt.evaluation.prompts import EvalPrompt, read_prompts
from csm_adapt.plugin_api import EvalContext, Evaluator, Utterance

REPO = Path(__file__).parents[1]
DEMO = REPO / "recipes" / "demo_data"
CPU = torch.device("cpu")


def utterance(text="Bonjour.", seconds=1.0, stopped=True, references=(), prompt_id="p"):
    audio = torch.zeros(int(seconds * SAMPLE_RATE))
    return Utterance(prompt_id, text, 0, audio, torch.zeros(32, 3, dtype=torch.long), stopped, 2000, references)


# Aggregation


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [0.1, 0.4, 0.2, 0.9, 0.3, 0.35, 0.05]
    low, high = bootstrap_interval(values, seed=3)
    assert (low, high) == bootstrap_interval(values, seed=3)
    assert low < np.mean(values) < high
    assert bootstrap_interval(values, seed=4) != (low, high)
    assert bootstrap_interval([2.5], seed=0) == (2.5, 2.5)
    # A wider spread gives a wider interval.
    wide = bootstrap_interval([v * 10 for v in values], seed=3)
    assert wide[1] - wide[0] == pytest.approx(10 * (high - low))


def test_summarize_means_each_metric_over_the_utterances_that_have_it():
    rows = [{"cer": 0.1, "sim": 0.5, "transcript": "a"}, {"cer": 0.3}, {"cer": 0.2, "sim": 0.7}]
    out = summarize(rows)
    assert set(out) == {"cer", "sim"}  # notes are not aggregated
    assert out["cer"].mean == pytest.approx(0.2) and out["cer"].count == 3
    assert out["sim"].mean == pytest.approx(0.6) and out["sim"].count == 2


# Objectives (train.best_by, sweep.objective)


def test_objective_parsing_and_direction():
    assert Objective.parse("val/loss") == Objective("val/loss", "min")
    assert Objective.parse("eval/ovrl:max").better(3.1, 3.0)
    assert Objective.parse("eval/cer:min").better(0.1, 0.2)
    assert not Objective.parse("eval/cer:min").better(math.nan, 0.2)
    assert Objective.parse("eval/cer:min").better(0.5, None)
    for bad, message in [
        ("eval/cer", "needs its direction"),
        ("val/loss:max", "minimised"),
        ("loss", "neither"),
        ("eval/:min", "neither"),
    ]:
        with pytest.raises(ValueError, match=message):
            Objective.parse(bad)


# Prompts files


def test_prompts_file_with_references_shared_by_speaker(tmp_path):
    clip = sorted((DEMO / "wavs").glob("*.wav"))[0]
    (tmp_path / "ref.wav").write_bytes(clip.read_bytes())
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"text": "Bonjour.", "speaker": 1, "reference": "ref.wav"},
        {"id": "q2", "text": "Au revoir.", "speaker": 1},
        {"text": "Salut.", "speaker": 2},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    prompts = read_prompts(path)
    assert [p.id for p in prompts] == ["line-1", "q2", "line-3"]
    assert prompts[1].references == prompts[0].references  # the speaker's clip from another line
    assert prompts[0].references[0].path == tmp_path / "ref.wav"
    assert prompts[2].references == ()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "a", "speeker": 1}', r"prompts.jsonl:2: unknown key\(s\) speeker"),
        ('{"text": ""}', "prompts.jsonl:2: text: expected a non-empty string"),
        ('{"text": "a", "speaker": "x"}', "prompts.jsonl:2: speaker: expected an integer"),
        ('{"text": "a", "reference": "missing.wav"}', "prompts.jsonl:2: reference clip not found"),
        ("{not json", "prompts.jsonl:2: not valid JSON"),
        ('{"id": "line-1", "text": "a"}', "prompt ids must be unique"),
    ],
)
def test_bad_prompt_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=message):
        read_prompts(path)


# The engine


class Echo(Evaluator):
    metrics = ("n",)

    def evaluate(self, batch):
        return [{"n": float(len(u.text)), "note": u.text} for u in batch]


class Clash(Evaluator):
    metrics = ("n",)

    def evaluate(self, batch):
        return [{"n": 0.0} for _ in batch]


def ref(name, cls):
    from csm_adapt.plugin_api import NoOptions

    return EvaluatorRef(name, NoOptions(), cls)


def test_two_evaluators_returning_the_same_metric_is_an_error():
    evaluators = EvaluatorSet([ref("echo", Echo), ref("clash", Clash)], EvalContext(CPU))
    with pytest.raises(CsmAdaptError, match="evaluators echo and clash both return 'n'"):
        evaluators.evaluate([utterance()])


class FakeSynthesizer:
    """Synthesizer.generate's contract, fast: prompt i of a call stops after (len(text) + seed) % 4
    frames, or runs to max_audio_ms when that is 3 (frames of 1920 samples). Records each call."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.calls = []

    def generate(self, texts, speaker, *, max_audio_ms, temperature, topk, seed):
        from csm_adapt.model.synthesizer import Generated

        self.calls.append((list(texts), speaker, seed))
        assert not self.model.training
        out = []
        for text in texts:
            n = (len(text) + seed) % 4
            n = max_audio_ms // 80 if n == 3 else n
            out.append(Generated(audio=torch.full((n * 1920,), 0.1), frames=torch.ones(32, n, dtype=torch.long)))
        return out


def test_evaluation_generates_every_prompt_per_seed_in_speaker_batches():
    prompts = [EvalPrompt(f"p{i}", text, speaker) for i, (text, speaker) in enumerate(
        [("Bonjour.", 0), ("Oui.", 1), ("Marie aime les pommes.", 0), ("Non merci.", 0)]
    )]  # fmt: skip
    cfg = EvalConfig(max_audio_ms=400, seeds=(0, 5), batch_size=2, evaluators=(ref("echo", Echo),))
    evaluation = Evaluation(cfg, prompts, EvaluatorSet(cfg.evaluators, EvalContext(CPU)))
    synthesizer = FakeSynthesizer()
    synthesizer.model.train()
    result = evaluation.run(synthesizer)
    assert synthesizer.model.training  # put back as it was
    texts = {p.id: p.text for p in prompts}
    assert synthesizer.calls == [
        ([texts["p0"], texts["p2"]], 0, 0), ([texts["p3"]], 0, 0), ([texts["p1"]], 1, 0),
        ([texts["p0"], texts["p2"]], 0, 5), ([texts["p3"]], 0, 5), ([texts["p1"]], 1, 5),
    ]  # fmt: skip
    assert [(i.utterance.prompt_id, i.utterance.seed) for i in result.items] == [
        (p, s) for s in (0, 5) for p in ("p0", "p2", "p3", "p1")
    ]
    for item in result.items:
        u = item.utterance
        assert item.scores == {"n": float(len(u.text)), "note": u.text}
        # Stopped by itself unless it ran to max_audio_ms (5 frames).
        assert u.stopped == ((len(u.text) + u.seed) % 4 != 3)
        assert u.frames.shape[1] == (5 if not u.stopped else (len(u.text) + u.seed) % 4)
    assert result.summary["eval/n"].mean == pytest.approx(np.mean([len(p.text) for p in prompts]))
    assert result.summary["eval/n"].count == 8
    assert result.scalars() == {"eval/n": result.summary["eval/n"].mean}


# Built-in evaluators


def registered(name):
    import click

    from csm_adapt.plugin_engine.manager import load_plugins
    from csm_adapt.plugin_engine.registries import collect

    return collect(load_plugins(), click.Group()).evaluators.get(name, "test")


def test_stopping_shares_and_duration_ratio():
    entry = registered("stopping")
    evaluator = entry.implementation(entry.options(), EvalContext(CPU, chars_per_second=10.0))
    # "Bonjour." is 8 characters: 0.8 s expected at 10 chars/s.
    out = evaluator.evaluate([utterance("Bonjour.", 0.8), utterance("  Bonjour. ", 2.4, stopped=False)])
    assert out == [
        {"eos": 1.0, "duration_ratio": pytest.approx(1.0)},
        {"eos": 0.0, "duration_ratio": pytest.approx(3.0)},
    ]
    override = entry.implementation(entry.options(chars_per_second=4.0), EvalContext(CPU, chars_per_second=10.0))
    assert override.evaluate([utterance("Bonjour.", 2.0)])[0]["duration_ratio"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="set its chars_per_second option"):
        entry.implementation(entry.options(), EvalContext(CPU))


def test_quality_scores_clean_speech_above_the_same_speech_in_noise():
    entry = registered("quality")
    evaluator = entry.implementation(entry.options(), EvalContext(CPU))
    clean = load_audio(DEMO / "wavs" / "fr_f3_002.wav")
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = clean + noise * clean.pow(2).mean().sqrt() * 1.5  # about -3.5 dB SNR
    empty = utterance(seconds=0)
    frames = torch.zeros(32, 1, dtype=torch.long)
    [c, n, e] = evaluator.evaluate(
        [
            Utterance("c", "x", 0, clean, frames, True, 1000),
            Utterance("n", "x", 0, noisy.clamp(-1, 1), frames, True, 1000),
            empty,
        ]
    )
    assert set(c) == {"sig", "bak", "ovrl"} and e == {}
    assert all(1 <= v <= 5 for v in c.values())
    assert c["ovrl"] > n["ovrl"] + 0.3 and c["bak"] > n["bak"] + 0.5
    assert evaluator.models()["ovrl"].startswith("DNSMOS P.835 sig_bak_ovr.onnx (speechmos ")


# The recipe's [eval] table and train.best_by


def demo_recipe(tmp_path, overrides):
    from csm_adapt.config import toml_io

    raw = toml_io.read_toml(REPO / "recipes" / "demo.toml")
    raw["output"]["run_dir"] = str(tmp_path / "run")
    path = tmp_path / "demo.toml"
    path.write_text(toml_io.dumps(raw))
    return load_recipe(path, overrides)


def test_demo_recipe_evaluates_stopping_and_quality(tmp_path):
    recipe = demo_recipe(tmp_path, ['train.best_by="eval/eos:max"'])
    assert [e.name for e in recipe.eval.evaluators] == ["stopping", "quality"]
    assert recipe.eval.metric_names() == {"eos", "duration_ratio", "sig", "bak", "ovrl"}
    assert recipe.eval.prompts is None  # validation utterances


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['train.best_by="eval/cer:min"'], "train.best_by: no evaluator of eval.evaluators produces 'cer'"),
        (['train.best_by="eval/ovrl"'], 'train.best_by: "eval/ovrl": an eval metric needs its direction'),
        (["eval.evaluators=[]"], r"eval.evaluators: needs at least one evaluator"),
        (
            ['eval.evaluators=[{name = "stopping"}, {name = "stopping"}]'],
            "eval.evaluators: an evaluator is listed twice",
        ),
        (['eval.evaluators=[{name = "quality", windows = 2}]'], r"eval.evaluators.0.windows: unknown key"),
        (
            ['eval.evaluators=[{name = "nope"}]'],
            'eval.evaluators.0.name: unknown evaluator "nope"; available: .*quality',
        ),
        (["eval.seeds=[]"], "eval.seeds: needs at least one seed"),
    ],
)
def test_bad_eval_settings_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        demo_recipe(tmp_path, overrides)


# csm-adapt evaluate and its report


class _Page(HTMLParser):
    """The report page's <audio> sources, its text, and any external resource it would load."""

    def __init__(self):
        super().__init__()
        self.audio, self.text, self.external = [], [], []

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "audio":
            self.audio.append(attributes)
        for key in ("src", "href"):
            if attributes.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attributes[key])

    def handle_data(self, data):
        self.text.append(data)


def test_evaluate_writes_a_self_contained_report_for_every_model_and_prompt(tmp_path):
    from click.testing import CliRunner

    from csm_adapt.cli import cli
    from csm_adapt.model.checkpoint import build_model, save_model
    from csm_adapt.model.synthesizer import write_frontend

    models = []
    for seed in (1, 2):
        directory = tmp_path / f"model-{seed}"
        save_model(build_model("micro", seed=seed), directory)
        write_frontend(directory, "offline", "offline")
        models.append(str(directory))
    prompts = tmp_path / "prompts.jsonl"
    texts = ["Bonjour <b>Marie</b>.", "Où est la gare ?", "Il fait beau."]
    prompts.write_text("".join(json.dumps({"text": t, "speaker": i % 2}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "report"
    args = ["evaluate", *models, "--prompts", str(prompts), "--evaluator", "stopping", "--chars-per-second", "12"]
    args += ["--max-audio-ms", "160", "--seed", "0", "--seed", "1", "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()  # piped: one line a model, however long, never wrapped at 80 columns
    for model in models:
        assert any(line.startswith(f"{model}: eval/") and "eval/duration_ratio" in line for line in lines), lines
    assert f"wrote {out / 'report.json'} and {out / 'report.html'}" in lines

    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == models
    assert report["settings"]["seeds"] == [0, 1] and report["settings"]["max_audio_ms"] == 160
    for model in report["models"]:
        assert set(model["summary"]) == {"eval/eos", "eval/duration_ratio"}
        assert len(model["utterances"]) == len(texts) * 2
        s = model["summary"]["eval/eos"]
        assert s["low"] <= s["mean"] <= s["high"] and s["count"] == 6

    page = _Page()
    page.feed((out / "report.html").read_text("utf-8"))
    text = "".join(page.text)
    assert all(m in text for m in models) and all(t in text for t in texts)  # the markup-like text shown as text
    assert "eval/duration_ratio" in text and not page.external
    assert len(page.audio) == len(models) * len(texts) * 2
    for attributes in page.audio:
        assert "controls" in attributes
        prefix = "data:audio/wav;base64,"
        assert attributes["src"].startswith(prefix)
        wav, rate = sf.read(io.BytesIO(base64.b64decode(attributes["src"][len(prefix) :])))
        assert rate == SAMPLE_RATE and wav.ndim == 1


def test_evaluate_needs_prompts_or_a_recipe():
    from click.testing import CliRunner

    from csm_adapt.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", "some/model"])
    assert result.exit_code == 2 and "give --prompts FILE or --recipe RECIPE" in result.output
