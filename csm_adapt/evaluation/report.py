"""`csm-adapt evaluate`'s output: `report.json`, the wavs, and `report.html`, a single offline page.

report.json holds the settings, which model produced each metric, every model's summary (mean and
95 % bootstrap interval per metric) and every utterance's scores and wav path. report.html shows the
same: a table of metrics per model, then per prompt its text and, for each model, an <audio> player
(the wav embedded as base64: the page needs no other file and no network), notes such as the ASR
transcript, and the utterance's metrics.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from collections.abc import Sequence
from pathlib import Path

import attrs

from csm_adapt.audio_io import SAMPLE_RATE, save_wav
from csm_adapt.config.schema import EvalConfig
from csm_adapt.config.structure import to_dict
from csm_adapt.evaluation.engine import PREFIX, EvalResult
from csm_adapt.evaluation.prompts import EvalPrompt

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


@attrs.frozen(eq=False)
class ModelResult:
    name: str  # as given on the command line
    result: EvalResult


def write_report(out: Path, cfg: EvalConfig, prompts: Sequence[EvalPrompt], results: Sequence[ModelResult]) -> Path:
    """Write report.json, audio/ and report.html into `out`; returns report.html's path."""
    out.mkdir(parents=True, exist_ok=True)
    models_used: dict[str, str] = {}
    entries = []
    for m, model in enumerate(results):
        models_used.update(model.result.models)
        utterances = []
        for item in model.result.items:
            u = item.utterance
            wav = out / "audio" / f"model-{m}" / f"{_safe(u.prompt_id)}-seed{u.seed}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            save_wav(wav, u.audio)
            utterances.append({
                "prompt_id": u.prompt_id, "seed": u.seed, "seconds": round(u.audio.numel() / SAMPLE_RATE, 3),
                "frames": int(u.frames.shape[1]), "stopped": u.stopped, "scores": item.scores,
                "audio": str(wav.relative_to(out)),
            })  # fmt: skip
        summary = {name: s.to_json() for name, s in model.result.summary.items()}
        entries.append({"name": model.name, "summary": summary, "utterances": utterances})
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "max_audio_ms": cfg.max_audio_ms,
            "seeds": list(cfg.seeds),
            "temperature": cfg.temperature,
            "topk": cfg.topk,
            "batch_size": cfg.batch_size,
            "evaluators": [{"name": e.name, **to_dict(e.options)} for e in cfg.evaluators],
        },  # fmt: skip
        "metric_models": models_used,
        "prompts": [
            {"id": p.id, "text": p.text, "speaker": p.speaker, "references": [str(r.path) for r in p.references]}
            for p in prompts
        ],
        "models": entries,
    }
    (out / REPORT_JSON).write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", "utf-8")
    path = out / REPORT_HTML
    path.write_text(render_html(report, out), "utf-8")
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def render_html(report: dict, out: Path) -> str:
    e = html.escape
    metrics = sorted({name for model in report["models"] for name in model["summary"]})
    rows = []
    for model in report["models"]:
        cells = []
        for name in metrics:
            s = model["summary"].get(name)
            interval = "" if s is None else f"<small>[{s['low']:.3f}, {s['high']:.3f}] n={s['count']}</small>"
            cells.append("<td>–</td>" if s is None else f"<td>{s['mean']:.3f} {interval}</td>")
        rows.append(f"<tr><th>{e(model['name'])}</th>{''.join(cells)}</tr>")
    produced = "".join(
        f"<li><code>{e(name)}</code>: {e(report['metric_models'].get(name, 'computed without a model'))}</li>"
        for name in metrics
    )
    settings = e(json.dumps(report["settings"], ensure_ascii=False))
    sections = []
    for prompt in report["prompts"]:
        blocks = []
        for model in report["models"]:
            for u in (u for u in model["utterances"] if u["prompt_id"] == prompt["id"]):
                audio = base64.b64encode((out / u["audio"]).read_bytes()).decode("ascii")
                notes = "".join(
                    f"<p class=note><b>{e(k)}</b>: {e(v)}</p>" for k, v in u["scores"].items() if isinstance(v, str)
                )
                values = ", ".join(f"{e(PREFIX + k)} {v:.3f}" for k, v in u["scores"].items() if not isinstance(v, str))
                stop = "stopped by itself" if u["stopped"] else "cut off at max_audio_ms"
                about = f"seed {u['seed']}, {u['seconds']:.2f} s, {stop}"
                blocks.append(
                    f"<div class=utt><h4>{e(model['name'])} <small>{about}</small></h4>"
                    f'<audio controls preload=none src="data:audio/wav;base64,{audio}"></audio>{notes}'
                    f"<p class=metrics>{values}</p></div>"
                )
        speaker = "" if prompt["speaker"] is None else f" <small>speaker {prompt['speaker']}</small>"
        title = f"<h3>{e(prompt['id'])}{speaker}</h3><p class=text>{e(prompt['text'])}</p>"
        sections.append(f"<section>{title}{''.join(blocks)}</section>")
    head = "".join(f"<th>{e(name)}</th>" for name in metrics)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>csm-adapt evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; }}
section {{ border-top: 1px solid #ccc; margin-top: 1.5em; }} .text {{ font-size: 1.2em; }}
.utt {{ margin: .5em 0 1em 1em; }} .note {{ margin: .2em 0; }} .metrics {{ color: #555; margin: .2em 0; }}
small {{ color: #666; }}
</style></head><body>
<h1>csm-adapt evaluation</h1>
<p>{e(report["created"])}. Means over all utterances, with a 95 % bootstrap interval and the number of utterances.</p>
<table><tr><th>model</th>{head}</tr>{"".join(rows)}</table>
<p>Which model produced each metric (figures from different models do not compare):</p><ul>{produced}</ul>
<p><small>settings: {settings}</small></p>
<h2>Prompts</h2>
{"".join(sections)}
</body></html>
"""
