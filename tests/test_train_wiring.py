"""The wiring of train(): what a resumed run restores, which frames and weights the logged losses use.

Each test here compares the run with an independent account of what it should have done (the
batches an uninterrupted run sees, a loss computed by hand from the same weights and batches), on
uneven data: several different micro-batches per epoch, with unequal frame counts.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from csm_adapt.config.recipe import load_recipe
from csm_adapt.data.loader import TrainLoader, ValLoader
from csm_adapt.data.packing import Packer
from csm_adapt.model.checkpoint import build_model, load_model
from csm_adapt.training.distributed import Dist
from csm_adapt.training.loop import train
from csm_adapt.training.step import Totals
from runs import KILLER, read_metrics, write_train_recipe  # tests/runs.py

# Short sequences and small micro-batches: the 9 training clips (~60 rows each) make several different
# micro-batches per epoch, and the two micro-batches of a step hold different numbers of frames.
K = 32
UNEVEN = [
    "data.max_rows=128", "train.rows_per_micro_batch=128", "train.rows_per_step=256", "train.pad_multiple=8",
    "train.num_workers=0",
]  # fmt: skip

STRATEGIES = '''
import json

import attrs
import torch
from csm_adapt import hookimpl


@attrs.frozen
class StridedOptions:
    stride: int = 3


class Strided:
    """The decoder learns from the target frames on every `stride`-th row; c0 weighs 0.3, the decoder 0.7."""

    def __init__(self, options):
        self.options = options

    def select_decoder_frames(self, target_mask, generator):
        rows = torch.arange(target_mask.shape[-1])
        return target_mask & (rows % self.options.stride == 0)

    def combine(self, parts):
        return 0.3 * parts.c0 + 0.7 * parts.decoder


@attrs.frozen
class GlobalOptions:
    record: str


class GlobalRandom:
    """Draws its decoder frames from torch's global RNG (as dropout in an adapter would), and appends
    what it saw (the target frames) and chose to `record`, one JSON line per micro-batch."""

    def __init__(self, options):
        self.options = options

    def select_decoder_frames(self, target_mask, generator):
        chosen = target_mask & (torch.rand(target_mask.shape) < 0.5)
        with open(self.options.record, "a") as f:
            seen = {"shape": list(target_mask.shape), "targets": target_mask.flatten().nonzero().flatten().tolist()}
            f.write(json.dumps({**seen, "chosen": chosen.flatten().nonzero().flatten().tolist()}) + "\\n")
        return chosen

    def combine(self, parts):
        return 0.5 * parts.c0 + 0.5 * parts.decoder


@hookimpl
def register_loss_strategies(register):
    register("strided", Strided, options=StridedOptions)
    register("global_random", GlobalRandom, options=GlobalOptions)
'''


def recipe_in(directory: Path, dataset: Path, overrides=(), *, extra="", plugins=(), strategy="strided"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "strategies.py").write_text(STRATEGIES)
    (directory / "killer.py").write_text(KILLER)
    path = write_train_recipe(
        directory,
        dataset,
        run_dir=directory / "run",
        strategy=strategy,
        plugins=["strategies.py", *plugins],
        extra=extra,
    )
    return load_recipe(path, [*UNEVEN, *overrides])


def packer_of(recipe) -> Packer:
    cfg = recipe.train
    return Packer(max_rows=recipe.data.max_rows, rows_per_batch=cfg.rows_per_micro_batch, pad_multiple=cfg.pad_multiple)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def kill_and_resume(demo_dataset, tmp_path_factory):
    """An uninterrupted 8-step run, and one killed at step 7 (last checkpoint: step 4) then resumed.

    Returns the strategy's records (one per micro-batch, two per step) of the uninterrupted run and
    of the resumed part of the other.
    """
    root = tmp_path_factory.mktemp("resume")
    whole = recipe_in(root / "whole", demo_dataset, [f"loss.record={root / 'whole.jsonl'}"], strategy="global_random")
    train(whole)
    killer = '[[loggers]]\nname = "killer"\nat_step = 7\n'
    overrides = [f"loss.record={root / 'killed.jsonl'}"]
    killed = recipe_in(
        root / "killed", demo_dataset, overrides, extra=killer, plugins=["killer.py"], strategy="global_random"
    )
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    resumed = load_recipe(
        root / "killed" / "recipe.toml", [*UNEVEN, "loggers.1.at_step=0", f"loss.record={root / 'resumed.jsonl'}"]
    )
    train(resumed, resume=True)
    return records(root / "whole.jsonl"), records(root / "resumed.jsonl"), whole, resumed


def test_resume_continues_with_the_batches_an_uninterrupted_run_sees(kill_and_resume):
    whole, resumed, recipe, _ = kill_and_resume
    targets = [(r["shape"], r["targets"]) for r in whole]
    # The data moves on: steps 5-8 train on other micro-batches than steps 1-4 (a fresh loader would repeat these).
    assert len(whole) == 16 and targets[8:] != targets[:8]
    assert len({json.dumps(t) for t in targets}) >= 3, "the fixture should make several different micro-batches"
    assert [(r["shape"], r["targets"]) for r in resumed] == targets[8:]


def test_resume_restores_the_global_rng(kill_and_resume):
    # The strategy draws from torch's global RNG: after resuming it must draw what the uninterrupted run drew.
    whole, resumed, recipe, resumed_recipe = kill_and_resume
    assert [r["chosen"] for r in resumed] == [r["chosen"] for r in whole[8:]]
    assert read_metrics(recipe.output.run_dir, "train/loss") == read_metrics(
        resumed_recipe.output.run_dir, "train/loss"
    )


@pytest.fixture(scope="module")
def one_step(demo_dataset, tmp_path_factory):
    """One optimizer step of two uneven micro-batches with the 'strided' strategy, validated and saved after it."""
    recipe = recipe_in(
        tmp_path_factory.mktemp("one-step"),
        demo_dataset,
        ["train.steps=1", "train.val_every=1", "train.checkpoint_every=1"],
    )
    final = train(recipe)
    return recipe, final


def summed_ce(out) -> tuple[torch.Tensor, torch.Tensor]:
    c0 = F.cross_entropy(out.c0_logits, out.c0_targets, reduction="sum")
    dec = F.cross_entropy(out.decoder_logits.flatten(0, 1), out.decoder_targets.flatten(), reduction="sum")
    return c0, dec


@torch.no_grad()
def test_the_step_loss_is_the_strategy_mean_over_every_frame_of_the_step(one_step):
    recipe, _ = one_step
    cfg = recipe.train
    # By hand: the weights train() starts from, the step's two micro-batches, every third row's frames for the decoder.
    model = build_model(recipe.model.config, seed=cfg.seed)
    loader = TrainLoader(
        recipe.data.out, packer_of(recipe), seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
        pack_buffer=cfg.pack_buffer, num_workers=0,
    )  # fmt: skip
    batches = iter(loader)
    micro = [next(batches), next(batches)]
    assert micro[0].num_frames != micro[1].num_frames  # uneven: a mean of per-micro-batch means would differ
    c0_sum = dec_sum = 0.0
    c0_n = dec_n = 0
    for b in micro:
        chosen = b.target_mask & (torch.arange(b.target_mask.shape[-1]) % 3 == 0)
        assert 0 < int(chosen.sum()) < b.num_frames  # the strategy's choice is neither all nor none of the frames
        out = model(b.tokens, b.mask, b.target_mask, input_pos=b.input_pos, doc_ids=b.doc_ids, decoder_mask=chosen)
        c0, dec = summed_ce(out)
        c0_sum, dec_sum = c0_sum + c0, dec_sum + dec
        c0_n, dec_n = c0_n + out.c0_targets.numel(), dec_n + out.decoder_targets.numel()  # token means
    expected = 0.3 * c0_sum / c0_n + 0.7 * dec_sum / dec_n
    logged = read_metrics(recipe.output.run_dir, "train/loss")[1]
    assert logged == pytest.approx(float(expected), rel=1e-5)
    assert read_metrics(recipe.output.run_dir, "train/loss_decoder")[1] == pytest.approx(
        float(dec_sum / dec_n), rel=1e-5
    )


@torch.no_grad()
def test_validation_scores_both_parts_of_every_val_frame_with_equal_weights(one_step):
    recipe, final = one_step
    model = load_model(final)  # the weights after the step, which validation scored
    c0_sum = dec_sum = 0.0
    frames = 0
    for b in ValLoader(recipe.data.out, packer_of(recipe), pack_buffer=recipe.train.pack_buffer):
        c0, dec = summed_ce(model(b.tokens, b.mask, b.target_mask, input_pos=b.input_pos, doc_ids=b.doc_ids))
        c0_sum, dec_sum, frames = c0_sum + c0, dec_sum + dec, frames + b.num_frames
    assert frames > 0
    # README: validation scores every frame with codebook 0 and the decoder, 0.5 each, whatever the
    # strategy (here 0.3 / 0.7); each part is a token mean (the decoder's over K - 1 codebooks).
    expected = 0.5 * c0_sum / frames + 0.5 * dec_sum / (frames * (K - 1))
    assert read_metrics(recipe.output.run_dir, "val/loss")[1] == pytest.approx(float(expected), rel=1e-5)


def test_a_log_line_reports_the_mean_loss_of_its_optimizer_steps():
    # With log_every > 1 the interval holds several steps (every training test above logs every step).
    totals = Totals.zeros(K, torch.device("cpu"))
    for step_loss in (2.0, 4.0, 9.0):
        totals.loss += step_loss  # as backward_step adds each step's loss
        totals.steps += 1
    metrics, _, _ = totals.reduce("train", Dist())
    assert metrics["train/loss"] == 5.0
