"""How well the instruction identity encoder separates the benchmark's tasks.

    python benchmarks/encoder_tokens.py [--config FILE] [--per-token 20 5] [--out benchmarks/results/encoder_tokens.json]

Client identity tokens are the normalised mean encoding of a client's instructions (``n`` per
token; a Hom beta=1 client holds ~20 of a task's 1000). For each ``n`` the script draws 16 disjoint
tokens per task from the train instructions and prints the cosine between tokens of the same task
(min / mean) and of different tasks (max / mean): DKO's tau must sit between them. It also prints
SSA routing on the test questions: how often a single question's encoding is closest to its own
task's token (the mean over all train instructions), and the mean softmax weight (epsilon = 0.05)
it gives that token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from secure_fcit.config import Config, load_config
from secure_fcit.data.schedule import TASK_ORDER
from secure_fcit.fcit.ssa import SSA_TEMPERATURE
from secure_fcit.fcit.workspace import prepare_workspace
from secure_fcit.model.encoder import load_encoder


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML config (default: built-in defaults)")
    ap.add_argument("--per-token", type=int, nargs="+", default=[20, 5])
    ap.add_argument("--out", default="benchmarks/results/encoder_tokens.json")
    args = ap.parse_args()
    cfg = load_config(args.config) if args.config else Config()
    t0 = time.perf_counter()
    ws = prepare_workspace(cfg, TASK_ORDER, progress=False)
    encoder = load_encoder(cfg.fcit.encoder, ws.model_dir)
    train = {t: encoder.encode([r.turns[0][0] for r in ws.train_records(t)]) for t in TASK_ORDER}
    result: dict = {"encoder": cfg.fcit.encoder, "tokens": {}, "routing": {}}
    for n in args.per_token:
        toks = {t: [_unit(e[k * n : (k + 1) * n].mean(0)) for k in range(min(16, len(e) // n))] for t, e in train.items()}
        same = [float(a @ b) for t in TASK_ORDER for i, a in enumerate(toks[t]) for b in toks[t][i + 1 :]]
        diff = [float(a @ b) for i, t in enumerate(TASK_ORDER) for u in TASK_ORDER[i + 1 :] for a in toks[t] for b in toks[u]]
        result["tokens"][n] = {
            "same_task_min": round(min(same), 3), "same_task_mean": round(float(np.mean(same)), 3),
            "different_task_max": round(max(diff), 3), "different_task_mean": round(float(np.mean(diff)), 3),
        }
        print(f"{n:3d} instructions/token: same-task cos min {min(same):.3f} mean {np.mean(same):.3f}; "
              f"different-task max {max(diff):.3f} mean {np.mean(diff):.3f}")
    centres = np.stack([_unit(train[t].mean(0)) for t in TASK_ORDER])
    print(f"{'task':14s} {'routed to own':>13s} {'mean alpha own':>15s}")
    for i, t in enumerate(TASK_ORDER):
        e = encoder.encode([r.text for r in ws.test_records(t)])
        sims = e @ centres.T
        alpha = torch.softmax(torch.from_numpy(sims) / SSA_TEMPERATURE, dim=-1).numpy()
        acc, own = float((sims.argmax(1) == i).mean() * 100), float(alpha[:, i].mean())
        result["routing"][t] = {"routed_to_own_pct": round(acc, 1), "mean_alpha_own": round(own, 3)}
        print(f"{t:14s} {acc:12.1f}% {own:15.3f}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
