"""Mutation testing of the core modules: plant one-line bugs, one at a time, and check a test fails.

Each mutant below is a one-line change (an operator flip, an off-by-one, a dropped call or check)
in the model, losses and strategies, packing/batches/loader, the training step and loop, trainer
state, checkpoint layouts, generation or the plugin registries, with the test files that should
catch it. The runner copies the tree (git's tracked and untracked files) into a temporary directory
per worker, imports csm_adapt from that copy, applies each mutant there, runs only its tests
(`pytest -x`), and restores the file. A mutant is *killed* when its tests fail, *survives* when
they pass; the score is killed / run. A mutant whose text no longer occurs in its file is an error
(the list must follow the code).

    python benchmarks/mutation.py                 # every mutant, 2 workers (`make mutation`)
    python benchmarks/mutation.py --list          # names and tests, no run
    python benchmarks/mutation.py --only rope-sign,eos-any --jobs 1

Not part of CI (it runs the selected tests once per mutant). Results and the reasons surviving
mutants are acceptable: benchmarks/RESULTS.md, "Mutation testing".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parents[1]


@attrs.frozen
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions


def m(name: str, path: str, old: str, new: str, *tests: str) -> Mutant:
    return Mutant(name, path, old, new, tests)


MODEL = "csm_adapt/model/"
TRAIN = "tests/test_train_wiring.py"
MUTANTS = [
    # The model.
    m("rope-sign", MODEL + "llama.py", "x0 * cos - x1 * sin", "x0 * cos + x1 * sin", "tests/test_model.py"),
    m(
        "rope-scaling",
        MODEL + "llama.py",
        "scaled = torch.where(wavelen < high_wavelen, freqs, blended)",
        "scaled = torch.where(wavelen < high_wavelen, blended, freqs)",
        "tests/test_model.py",
    ),
    m(
        "state-shift",
        MODEL + "csm.py",
        "h_prev = h[:, :-1].reshape",
        "h_prev = h[:, 1:].reshape",
        "tests/test_model.py",
    ),
    m(
        "no-segments",
        MODEL + "csm.py",
        "attn = None if doc_ids is None else Segments.from_doc_ids(doc_ids).to(device)",
        "attn = None",
        "tests/test_packing.py",
    ),
    m(
        "decoder-mask-ignored",
        MODEL + "csm.py",
        "dec = targets if decoder_mask is None else decoder_mask[:, 1:] & targets",
        "dec = targets",
        "tests/test_model.py",
    ),
    # Generation.
    m(
        "eos-any",
        MODEL + "generation.py",
        "is_eos = (frame == 0).all(dim=1)",
        "is_eos = (frame == 0).any(dim=1)",
        "tests/test_model.py",
        "-k",
        "eos or zero_frame",
    ),
    m(
        "eos-overwrite",
        MODEL + "generation.py",
        "ends = torch.where(is_eos & ~done, step, ends)",
        "ends = torch.where(is_eos, step, ends)",
        "tests/test_model.py",
        "-k",
        "eos or zero_frame",
    ),
    m(
        "pads-attended",
        MODEL + "generation.py",
        "valid[i, longest - n : longest] = True",
        "valid[i, :longest] = True",
        "tests/test_model.py",
        "-k",
        "batched",
    ),
    m(
        "topk-off-by-one",
        MODEL + "generation.py",
        "logits.masked_fill(logits < kth",
        "logits.masked_fill(logits <= kth",
        "tests/test_model.py",
        "-k",
        "sampling or greedy",
    ),
    # Checkpoint layouts.
    m(
        "k-rows-unpermuted",
        MODEL + "transformers_layout.py",
        '    elif name.endswith("attn.k_proj.weight"):\n        heads = flavor.num_kv_heads',
        '    elif name.endswith("attn.k_proj.weight"):\n        return None',
        "tests/test_checkpoint.py",
    ),
    m(
        "tied-tables-unchecked",
        MODEL + "transformers_layout.py",
        "if not torch.equal(state[name], tensor):",
        "if False:",
        "tests/test_checkpoint.py",
    ),
    # Losses and strategies.
    m(
        "empty-ce-nan",
        "csm_adapt/training/losses.py",
        "return logits.sum() * 0.0",
        "return F.cross_entropy(logits, targets)",
        "tests/test_losses.py",
    ),
    m(
        "accuracy-frames",
        "csm_adapt/training/losses.py",
        "correct.float().mean(0)",
        "correct.float().mean()",
        "tests/test_losses.py",
    ),
    m(
        "strategy-weights",
        "plugins/loss_strategies.py",
        "(1 - w) * parts.c0 + w * parts.decoder",
        "w * parts.c0 + (1 - w) * parts.decoder",
        "tests/test_losses.py",
    ),
    # Packing, batches, loader.
    m(
        "pack-limit",
        "csm_adapt/data/packing.py",
        "if lengths[i] > self.max_rows:",
        "if lengths[i] >= self.max_rows:",
        "tests/test_packing.py",
    ),
    m(
        "one-doc-id",
        "csm_adapt/data/batches.py",
        "doc_ids[i, start:end] = doc",
        "doc_ids[i, start:end] = 0",
        "tests/test_packing.py",
    ),
    m(
        "val-pack-buffer",
        "csm_adapt/data/loader.py",
        "for plan in _plans(samples, self.packer, self.pack_buffer, rng=None):",
        "for plan in _plans(samples, self.packer, 512, rng=None):",
        "tests/test_loader.py",
        "-k",
        "validation",
    ),
    # The training step and loop.
    m(
        "per-micro-batch-mean",
        "csm_adapt/training/step.py",
        "c0=parts.c0 * parts.c0_frames / n_c0, decoder=parts.decoder * parts.decoder_frames / n_dec,",
        "c0=parts.c0 / len(batches), decoder=parts.decoder / len(batches),",
        TRAIN,
        "-k",
        "step_loss",
    ),
    m(
        "loss-not-averaged",
        "csm_adapt/training/step.py",
        'out[f"{prefix}/loss"] = loss / self.steps',
        'out[f"{prefix}/loss"] = loss',
        TRAIN,
        "-k",
        "log_line",
    ),
    m(
        "all-frames-to-decoder",
        "csm_adapt/training/loop.py",
        "decoder_masks = [strategy.select_decoder_frames(b.target_mask, frame_gen) for b in micro]",
        "decoder_masks = [b.target_mask for b in micro]",
        TRAIN,
        "-k",
        "step_loss",
    ),
    m(
        "val-no-decoder",
        "csm_adapt/training/loop.py",
        'metrics["val/loss"] = (1 - VAL_DECODER_WEIGHT) * metrics["val/loss_c0"] + VAL_DECODER_WEIGHT * metrics[',
        'metrics["val/loss"] = metrics["val/loss_c0"] + 0 * metrics[',
        TRAIN,
        "-k",
        "validation",
    ),
    m(
        "val-weight",
        "csm_adapt/training/loop.py",
        "VAL_DECODER_WEIGHT = 0.5",
        "VAL_DECODER_WEIGHT = 0.7",
        TRAIN,
        "-k",
        "validation",
    ),
    # Trainer state (resume).
    m(
        "loader-not-restored",
        "csm_adapt/training/trainer_state.py",
        'self.loader.load_state_dict(mine["loader"])',
        "pass",
        TRAIN,
        "-k",
        "resume",
    ),
    m(
        "rng-not-restored",
        "csm_adapt/training/trainer_state.py",
        'torch.set_rng_state(state["rng_cpu"])',
        "pass",
        TRAIN,
        "-k",
        "resume",
    ),
    m(
        "frame-gen-not-restored",
        "csm_adapt/training/trainer_state.py",
        'self.frame_gen.set_state(mine["frame_gen"])',
        "pass",
        "tests/test_train.py",
        "-k",
        "kill_and_resume",
    ),
    # Registries and plugin loading.
    m(
        "duplicate-local-plugin",
        "csm_adapt/plugin_engine/manager.py",
        "    if pm.has_plugin(name):\n",
        "    if False:\n",
        "tests/test_plugins.py",
    ),
]


def copy_tree(dest: Path) -> Path:
    """The working tree as git sees it (tracked and untracked, not ignored), importable from `dest`."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src, dst = REPO / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    # Installed, the built-in plugins are the package `csm_adapt_plugins` (setup.py); the copy must shadow them too.
    (dest / "csm_adapt_plugins").symlink_to("plugins")
    return dest


def run_tests(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, str, float]:
    """(passed, last lines of output, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        r = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s (counted as killed)", time.monotonic() - start
    tail = [line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR")) or " passed" in line]
    return r.returncode == 0, " | ".join(tail[-3:]), time.monotonic() - start


def run_mutant(tree: Path, mutant: Mutant, timeout: int) -> dict:
    path = tree / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        return {"name": mutant.name, "status": "error", "detail": f"text occurs {text.count(mutant.old)} times"}
    path.write_text(text.replace(mutant.old, mutant.new))
    try:
        passed, detail, seconds = run_tests(tree, mutant.tests, timeout)
    finally:
        path.write_text(text)
    return {"name": mutant.name, "status": "survived" if passed else "killed", "detail": detail, "s": round(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once, each in its own copy (default 2)")
    parser.add_argument(
        "--timeout", type=int, default=900, help="seconds per mutant's tests (a timeout counts as killed)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each mutant's tests")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    mutants = MUTANTS
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {x.name for x in MUTANTS})
        if unknown:
            parser.error(f"unknown mutants: {', '.join(unknown)}")
        mutants = [x for x in MUTANTS if x.name in wanted]
    if args.list:
        for x in mutants:
            print(f"{x.name:24} {x.path:42} {' '.join(x.tests)}")
        return 0

    with tempfile.TemporaryDirectory(prefix="csm-adapt-mutation-") as tmp:
        trees = [copy_tree(Path(tmp) / f"tree{i}") for i in range(max(1, args.jobs))]
        # Unmutated, each mutant's tests must pass, or its being "killed" would mean nothing.
        if not args.no_baseline:
            for tests in dict.fromkeys(x.tests for x in mutants):
                passed, detail, seconds = run_tests(trees[0], tests, args.timeout)
                print(f"baseline {' '.join(tests)}: {'pass' if passed else 'FAIL'} in {seconds:.0f} s  {detail}")
                if not passed:
                    return 2
        free = list(trees)

        def work(mutant: Mutant) -> dict:
            tree = free.pop()
            try:
                result = run_mutant(tree, mutant, args.timeout)
            finally:
                free.append(tree)
            print(f"{result['status']:8} {mutant.name:24} {result.get('s', '')!s:>5} s  {result['detail']}", flush=True)
            return result

        with ThreadPoolExecutor(len(trees)) as pool:
            results = list(pool.map(work, mutants))

    killed = sum(r["status"] == "killed" for r in results)
    survived = [r["name"] for r in results if r["status"] == "survived"]
    errors = [r["name"] for r in results if r["status"] == "error"]
    score = f"{killed}/{len(results) - len(errors)} killed"
    print(f"\nscore: {score}; survived: {survived or 'none'}; errors: {errors or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
