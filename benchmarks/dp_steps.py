"""How many server steps a task needs, and how much of the learning the accounted noise leaves: a
centralised emulation of one distributed-DP stage.

    python benchmarks/dp_steps.py [--config configs/demo.toml] [--stage 0] [--targets vo]
        [--optimizer momentum|adam|sgd] [--lr 4] [--steps 30] [--batch 250]
        [--emulate-samples 500] [--rounds 30] [--noise accounted|none] [--eval-every 6]
        [--out benchmarks/results/dp_steps/<name>.json] [--sigma-only]

Distributed DP (`dp.distributed`) takes one step per round at the coordinator on the noisy mean of
the cohort's per-sample clipped gradients. This script takes the same step on one process, with
no federation: each step draws ``--batch`` of the stage's training samples, computes their
per-sample gradients of a fresh slot (lora_B, FFA-LoRA) with the project's own
`dp.sgd.clipped_per_sample_grads` (clip ``dp.max_grad_norm``), adds Gaussian noise with the
standard deviation a real round would carry on a cohort of ``--emulate-samples`` samples, divides
by the batch, and steps with the coordinator's own optimizer (`fcit.dko.DistributedStep.direction`:
SGD, momentum 0.9, or Adam). The noise per coordinate of the mean is the real one:
sigma * sqrt(C^2 + a^2) * sqrt(excess) / emulate_samples, where sigma is the Skellam noise
multiplier of the real encoding (`dp.distributed.DistributedEncoding` of the trained coordinates
at the masking fixed point's scale) for ``--rounds`` releases at ``dp.sample_rate`` with the config's
token share in the schedule (`dp.skellam.derive_skellam_variance`), and excess is the share
overshoot of a full cohort (n / (t - c)). Every ``--eval-every`` steps the slot is scored on the
stage's test set (greedy answers, the task's metric), alone (no routing).

This is a diagnostic, not a private run: Gaussian instead of Skellam noise, no integer encoding,
nothing journaled. ``--noise none`` gives the noise-free learning curve of the same steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from secure_fcit.config import LORA_TARGETS, load_config, parse_sets
from secure_fcit.dp.distributed import DistributedEncoding, share_variance
from secure_fcit.dp.sgd import clipped_per_sample_grads
from secure_fcit.dp.skellam import derive_skellam_variance
from secure_fcit.fcit.dko import DistributedStep
from secure_fcit.fcit.evaluate import evaluate_records
from secure_fcit.fcit.simulate import build_slots, scenario_for, slot_layout, stream_tasks
from secure_fcit.fcit.workspace import prepare_workspace, task_metric
from secure_fcit.model.loading import weights_sha256
from secure_fcit.protocols.secagg import threshold


def accounted_sigma(dp, enc: DistributedEncoding, rounds: int) -> float:
    """The Skellam noise multiplier sqrt(mu) / l2 of ``rounds`` releases of encoding ``enc`` at
    q = dp.sample_rate, with one token release in the schedule (as the ledger plans a task of one
    stage)."""
    l2, l1 = enc.sensitivity()
    tokens = ((dp.token_noise_multiplier, 1.0, 1),)
    mu = derive_skellam_variance([], l2=l2, l1=l1, q=dp.sample_rate, steps=rounds, target_epsilon=dp.epsilon,
                                 delta=dp.delta, gaussian=tokens)
    if mu is None:
        raise SystemExit(f"{rounds} releases at q {dp.sample_rate} cannot fit epsilon {dp.epsilon}")
    return math.sqrt(mu) / l2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dp_steps.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--stage", type=int, default=0)
    ap.add_argument("--targets", default="vo", choices=list(LORA_TARGETS))
    ap.add_argument("--optimizer", default="momentum", choices=("sgd", "momentum", "adam"))
    ap.add_argument("--lr", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=250, help="samples whose gradients each step computes")
    ap.add_argument("--emulate-samples", type=int, default=500,
                    help="the cohort's samples per round whose noise-to-signal the step carries")
    ap.add_argument("--rounds", type=int, default=30, help="releases the task's sigma is derived for")
    ap.add_argument("--noise", default="accounted", choices=("accounted", "none"))
    ap.add_argument("--eval-every", type=int, default=6)
    ap.add_argument("--out", default="")
    ap.add_argument("--sigma-only", action="store_true",
                    help="print sigma and the noise per coordinate of the recipe, and train nothing")
    args = ap.parse_args(argv)
    if min(args.steps, args.batch, args.emulate_samples, args.rounds, args.eval_every) < 1:
        ap.error("--steps, --batch, --emulate-samples, --rounds and --eval-every must be positive")
    config = load_config(args.config, parse_sets(args.set))
    config = replace(config, fcit=replace(config.fcit, slot_targets=args.targets))
    dp = config.dp
    ws = prepare_workspace(config, stream_tasks(config), progress=True)
    scenario = scenario_for(config, ws)
    if not 0 <= args.stage < len(scenario.stages):
        ap.error(f"--stage must be in 0..{len(scenario.stages) - 1}")
    stage = scenario.stages[args.stage]
    task = stage.tasks[0]
    samples = [ws.train_samples(t)[int(i)] for parts in stage.client_data.values() for t, idx in parts for i in idx]
    masking = config.privacy.masking()
    cohort = config.scenario.clients_per_round
    size = cohort if masking.degree == 0 else min(cohort, masking.degree + 1)
    t, colluders = threshold(masking.threshold, size), min(masking.colluders, size - 1)
    excess = cohort * share_variance(1.0, cohort, t, colluders)
    model, _ = ws.base_model()
    torch.manual_seed(config.seed)
    slots = build_slots(model, slot_layout(config, len(scenario.stages)))
    pad = ws.processor.tokenizer.pad_token_id
    w = slots.initial_vector(config.seed + 1)
    idx = slots.trainable_index(freeze_a=True)
    x = w[idx].astype(np.float64)
    enc = DistributedEncoding(dim=int(idx.size), clip=dp.max_grad_norm, count_scale=dp.count_scale,
                              scale_bits=dp.scale_bits or masking.check_cohort(cohort).frac_bits)
    sigma = accounted_sigma(dp, enc, args.rounds) if args.noise == "accounted" else 0.0
    std_sum = sigma * enc.sample_norm * math.sqrt(excess) * args.batch / args.emulate_samples
    # the coordinator's own server step (post-processing of the noisy mean)
    momentum = dp.server_momentum if args.optimizer == "momentum" else 0.0
    server = DistributedStep("dp_steps", idx, dp.count_scale, args.lr, momentum=momentum, adam=args.optimizer == "adam")
    state = None
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    print(f"{task}: {len(samples)} training samples, {x.size} trained coordinates ({args.targets}), "
          f"sigma {sigma:.3f} for {args.rounds} releases at q {dp.sample_rate:g} (excess {excess:.2f}), "
          f"noise per coordinate of the mean {std_sum / args.batch:.2e} (as on {args.emulate_samples} samples)")
    if args.sigma_only:
        return 0

    def score() -> tuple[float, list[str]]:
        slots.load_slot(0, w)
        with slots.training(0, freeze_a=True), torch.no_grad():
            slots.model.eval()
            res = evaluate_records(slots.model, ws.processor, ws.test_records(task), task_metric(config, task),
                                   max_new_tokens=ws.max_new_tokens(task), batch_size=config.eval.batch_size)
        return res.score, list(res.predictions[:4])

    curve, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        chosen = rng.choice(len(samples), size=min(args.batch, len(samples)), replace=False)
        slots.load_slot(0, w)
        with slots.training(0, freeze_a=True) as params:
            g, losses = clipped_per_sample_grads(slots.model, params, [samples[i] for i in chosen],
                                                 max_grad_norm=dp.max_grad_norm, pad_id=pad)
        mean = (g.sum(0) + std_sum * torch.randn(g.shape[1], dtype=torch.float64, generator=gen)) / len(chosen)
        direction, state = server.direction(state, mean.numpy())
        x = x - server.server_lr * direction
        w = w.copy()
        w[idx] = x.astype(np.float32)
        row = {"step": step, "loss": round(float(np.mean(losses)), 4), "seconds": round(time.perf_counter() - t0, 1)}
        if step % args.eval_every == 0 or step == args.steps:
            row["score"], preds = score()
            print(f"step {step}: loss {row['loss']:.3f}, {task} {row['score']:.1f} (e.g. {preds})", flush=True)
        curve.append(row)
    name = (f"{Path(args.config).stem}-s{args.stage}-{args.targets}-{args.optimizer}{args.lr:g}-"
            f"{'nonoise' if args.noise == 'none' else f'n{args.emulate_samples}-r{args.rounds}-q{dp.sample_rate:g}'}"
            + "".join("-" + "".join(ch if ch.isalnum() or ch in "._=" else "_" for ch in kv) for kv in args.set))
    out = Path(args.out or f"benchmarks/results/dp_steps/{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": args.config, "sets": args.set, "task": task, "targets": args.targets, "optimizer": args.optimizer,
        "lr": args.lr, "batch": args.batch, "emulate_samples": args.emulate_samples, "rounds": args.rounds,
        "noise": args.noise, "sigma": sigma, "excess": excess, "noise_per_coordinate": std_sum / args.batch,
        "model_sha256": weights_sha256(ws.model_dir), "curve": curve}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
