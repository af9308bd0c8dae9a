"""Where the per-sample gradient signal of a slot sits, per LoRA target module: the measurement
behind the DP configs' ``fcit.slot_targets``.

    python benchmarks/dp_targets.py [--config configs/demo.toml] [--samples 160] [--set KEY=VALUE ...]
        [--out benchmarks/results/dp_targets.json]

Under DP every trained coordinate gets the same noise, whether or not the gradient signal is
there. For each stage of the config's stream, the script computes the per-sample gradients of a
fresh slot with LoRA on every projection (``all``, lora_B only when ``fcit.freeze_lora_a``), at
the shipped weights, for up to ``--samples`` of the stage's training samples. Every per-sample
gradient is normalised (distributed DP clips each to C, and the measured norms are far above C = 1),
and the signal is the squared norm of their mean, debiased for the finite sample:
(n ||mean||^2 - mean ||g||^2) / (n - 1) per module. The script prints, per module type and per
target set, the share of the signal and of the coordinates, and the signal-to-noise gain of the
set: (signal share) / (coordinate share), the factor by which the squared signal-to-noise ratio of
one noisy step grows when only that set is trained (the same noise per coordinate).
Nothing is trained or released.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from secure_fcit.config import LORA_TARGETS, load_config, parse_sets
from secure_fcit.dp.sgd import clipped_per_sample_grads
from secure_fcit.fcit.simulate import build_slots, scenario_for, slot_layout, stream_tasks
from secure_fcit.fcit.workspace import prepare_workspace
from secure_fcit.model.loading import weights_sha256

_MODULE = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.")


def stage_signal(slots, params, names, samples, pad_id: int) -> tuple[dict[str, list[float]], np.ndarray]:
    """Per (layer, projection): [debiased squared signal, coordinates] of the mean normalised
    gradient; and the per-sample gradient norms before normalisation."""
    g, _ = clipped_per_sample_grads(slots.model, params, samples, max_grad_norm=1e30, pad_id=pad_id)
    norms = g.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise SystemExit("a sample has a zero gradient; the signal estimate needs every sample to train")
    g = g / norms
    n, out, lo = g.shape[0], {}, 0
    for p, name in zip(params, names, strict=True):
        part = g[:, lo : lo + p.numel()]
        lo += p.numel()
        mean_sq = float(part.mean(0).pow(2).sum())
        per_sample = float(part.pow(2).sum(1).mean())
        m = _MODULE.search(name)
        if m is None:
            raise SystemExit(f"unexpected slot parameter {name}")
        key = f"L{m.group(1)}.{m.group(2)}"
        cell = out.setdefault(key, [0.0, 0])
        cell[0] += max(0.0, (n * mean_sq - per_sample) / (n - 1))
        cell[1] += p.numel()
    return out, norms.flatten().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dp_targets.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--samples", type=int, default=160, help="training samples per stage (at least 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="benchmarks/results/dp_targets.json")
    args = ap.parse_args(argv)
    if args.samples < 2:
        ap.error("--samples must be at least 2")
    config = load_config(args.config, parse_sets(args.set))
    config = replace(config, fcit=replace(config.fcit, slot_targets="all"))
    t0 = time.perf_counter()
    ws = prepare_workspace(config, stream_tasks(config), progress=True)
    scenario = scenario_for(config, ws)
    model, _ = ws.base_model()
    torch.manual_seed(config.seed)
    slots = build_slots(model, slot_layout(config, len(scenario.stages)))
    pad = ws.processor.tokenizer.pad_token_id
    names_of = {id(p): n for n, p in slots.model.named_parameters()}
    stages = []
    for stage in scenario.stages:
        samples = [ws.train_samples(task)[int(i)] for parts in stage.client_data.values() for task, idx in parts
                   for i in idx][: args.samples]
        with slots.training(0, freeze_a=config.fcit.freeze_lora_a) as params:
            cells, norms = stage_signal(slots, list(params), [names_of[id(p)] for p in params], samples, pad)
        total = sum(v[0] for v in cells.values())
        dims = sum(v[1] for v in cells.values())
        by_proj: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for key, (sig, d) in cells.items():
            by_proj[key.split(".", 1)[1]][0] += sig
            by_proj[key.split(".", 1)[1]][1] += d
        sets = {}
        for name, projs in LORA_TARGETS.items():
            sig = sum(by_proj[p][0] for p in projs) / total
            share = sum(by_proj[p][1] for p in projs) / dims
            sets[name] = {"signal_share": round(sig, 4), "coordinate_share": round(share, 4),
                          "snr2_gain": round(sig / share, 3)}
        row = {"stage": stage.index, "tasks": list(stage.tasks), "samples": len(samples), "coordinates": dims,
               "signal": round(total, 6),
               "gradient_norm_percentiles": {p: round(float(np.percentile(norms, p)), 3) for p in (10, 50, 90)},
               "clipped_at_c": round(float(np.mean(norms > config.dp.max_grad_norm)), 3),
               "projections": {p: {"signal_share": round(s / total, 4), "coordinate_share": round(d / dims, 4)}
                               for p, (s, d) in sorted(by_proj.items())},
               "layers": {k: {"signal_share": round(s / total, 4), "coordinate_share": round(d / dims, 4)}
                          for k, (s, d) in sorted(cells.items())},
               "target_sets": sets}
        stages.append(row)
        print(f"stage {stage.index} {'+'.join(stage.tasks)}: {len(samples)} samples, {dims} coordinates, "
              f"squared signal {total:.4f}; per-sample gradient norms (10/50/90 %) "
              f"{np.percentile(norms, 10):.2f}/{np.percentile(norms, 50):.2f}/{np.percentile(norms, 90):.2f}, "
              f"{np.mean(norms > config.dp.max_grad_norm):.0%} above C = {config.dp.max_grad_norm:g}")
        for name, s in sets.items():
            print(f"  {name:5s} signal {s['signal_share']:6.1%} of it in {s['coordinate_share']:6.1%} of the "
                  f"coordinates: SNR^2 x {s['snr2_gain']:.2f}")
    mean_gain = {name: round(sum(r["target_sets"][name]["snr2_gain"] for r in stages) / len(stages), 3)
                 for name in LORA_TARGETS}
    print("mean SNR^2 gain over the stages: " + ", ".join(f"{k} {v:.2f}" for k, v in mean_gain.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "sets": args.set, "model_sha256": weights_sha256(ws.model_dir),
                               "freeze_lora_a": config.fcit.freeze_lora_a, "seconds": round(time.perf_counter() - t0, 1),
                               "mean_snr2_gain": mean_gain, "stages": stages}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
