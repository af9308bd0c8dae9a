"""DP-SGD figures on the embedded tiny model: clipping, noise, accounting, the cap, step time.

    python benchmarks/dp_checks.py [--config configs/hom-task.toml] [--steps 60] [--out benchmarks/results/dp_checks.json]

On one LoRA slot laid out as in the config (rank, targets) of the embedded tiny LLaVA model:
1. ``clipping``: with sigma = 0 and q = 1, one DP-SGD step (SGD, lr 1) against a manual loop over
   the samples (per-sample gradient, clipped to C, summed, / n): relative L2 error (target 1e-5),
   in float32 (the training dtype; measured ~1.7e-5 of rounding over 117k coordinates) and with
   the model in float64 (``clipping_float64``, the pass criterion: ~3e-14).
2. ``noise``: a batch whose per-sample gradients are exactly zero (no answer token): the step is
   the noise alone; its per-coordinate std against sigma*C/B with a chi-square test at 99%, and
   whether every parameter outside the slot stayed bit-identical.
3. ``accounting``: a ledger charged for 8 rounds with derived sigma; the audit report's epsilon vs
   fresh ``opacus`` RDP and PRV accountants over the journal's history (|difference|, target 1e-6),
   and the 9th round beyond a fixed-sigma cap refused.
4. ``step_time``: median seconds of a DP-SGD step and of a non-private step (same 16 samples,
   same slot, AdamW), over ``--steps`` steps each, and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy import stats

from secure_fcit.config import Config, DPConfig, load_config
from secure_fcit.dp.journal import read_journal
from secure_fcit.dp.ledger import PrivacyLedger
from secure_fcit.dp.report import audit
from secure_fcit.dp.sgd import dp_train_steps
from secure_fcit.errors import BudgetExhausted
from secure_fcit.fcit.workspace import prepare_workspace
from secure_fcit.model.chat import collate_train, per_sequence_loss
from secure_fcit.model.slots import SlotLoRA


def _slots(ws, cfg: Config) -> SlotLoRA:
    model, _ = ws.base_model()
    fc = cfg.fcit
    slots = SlotLoRA(model, rank=fc.slot_rank, alpha=fc.slot_alpha, targets=fc.slot_targets, max_slots=2)
    slots.ensure_slot(1)
    rng = np.random.default_rng(0)  # benchmark weights, not a secret
    slots.load_slot(1, slots.initial_vector(3) + 0.02 * rng.standard_normal(slots.slot_size).astype(np.float32))
    return slots


def clipping(slots, samples, pad, C=0.05) -> dict:
    with slots.training(1) as params:
        manual = [torch.zeros_like(p) for p in params]
        # The same padded batch as DP-SGD's forward; then each sample's own loss, one at a time.
        b = collate_train(samples, pad)
        losses = per_sequence_loss(slots.model(**b.model_inputs()).logits, b.labels)
        for i in range(len(samples)):
            grads = torch.autograd.grad(losses[i], params, retain_graph=True)
            norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
            for acc, g in zip(manual, grads, strict=True):
                acc += g * min(1.0, C / (norm + 1e-6))
        before = [p.detach().clone() for p in params]
        dp_train_steps(slots.model, params, samples, noise_multiplier=0.0, max_grad_norm=C, sample_rate=1.0, steps=1,
                       lr=1.0, pad_id=pad, optimizer="sgd")
        step = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, params, strict=True)])
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                p.copy_(b)
    ref = torch.cat([m.reshape(-1) for m in manual]) / len(samples)
    return {"C": C, "samples": len(samples), "relative_error": float((step - ref).norm() / ref.norm()), "target": 1e-5}


def _in_float64(slots, samples, pad) -> dict:
    """The same check with the model in float64: what is left is the algorithm, not float32 rounding."""
    slots.model.to(torch.float64)
    try:
        return clipping(slots, [dataclasses.replace(s, pixel_values=s.pixel_values.double()) for s in samples], pad)
    finally:
        slots.model.to(torch.float32)


def noise(slots, samples, pad, sigma=1.0, C=1.0, q=0.5) -> dict:
    silent = [dataclasses.replace(s, labels=torch.full_like(s.labels, -100)) for s in samples]
    before = {n: p.detach().clone() for n, p in slots.model.named_parameters()}
    with slots.training(1) as params:
        dp_train_steps(slots.model, params, silent, noise_multiplier=sigma, max_grad_norm=C, sample_rate=q, steps=1,
                       lr=1.0, pad_id=pad, optimizer="sgd")
    after = {n: p.detach().clone() for n, p in slots.model.named_parameters()}
    names = set(slots._names[1])
    z = torch.cat([(after[n] - before[n]).reshape(-1) for n in sorted(names)]).double().numpy()
    target = sigma * C / (q * len(silent))
    d = z.size
    stat = (d - 1) * z.var(ddof=1) / target**2
    lo, hi = stats.chi2.ppf([0.005, 0.995], d - 1)
    outside = [n for n in before if n not in names and not torch.equal(before[n], after[n])]
    with torch.no_grad():
        for n, p in slots.model.named_parameters():
            p.copy_(before[n])
    return {"sigma": sigma, "C": C, "B": q * len(silent), "coordinates": d, "std_measured": float(z.std(ddof=1)),
            "std_target": target, "chi2_99_pass": bool(lo < stat < hi), "finite": bool(np.isfinite(z).all()),
            "changed_outside_slot": len(outside)}


def accounting() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dp = DPConfig(enabled=True, epsilon=8.0, delta=1e-5)
        led = PrivacyLedger(Path(tmp), "client-000", dp)
        for r, n in enumerate((20, 20, 23, 23, 17, 17, 31, 31)):
            led.charge(led.plan(r // 2, r, n, 16, 5.0, 12))
        hist = [(e["sigma"], e["q"], e["steps"]) for e in read_journal(led.journal.path) if e["kind"] == "dp-sgd"]
        rdp, prv = RDPAccountant(), PRVAccountant()
        rdp.history, prv.history = list(hist), list(hist)
        rep = audit(Path(tmp), progress=False)["clients"][0]
        fixed = PrivacyLedger(Path(tmp) / "fixed", "client-001", DPConfig(enabled=True, epsilon=6.0, noise_multiplier=1.0))
        fixed.charge(fixed.plan(0, 0, 40, 16, 1.0, 1))
        try:
            fixed.plan(0, 1, 40, 16, 1.0, 1)
            refusal = None
        except BudgetExhausted as exc:
            refusal = str(exc)
    return {"rounds": len(hist), "report_eps_rdp": rep["epsilon"]["rdp"], "opacus_eps_rdp": rdp.get_epsilon(1e-5),
            "report_eps_prv": rep["epsilon"]["prv"], "opacus_eps_prv": prv.get_epsilon(1e-5, eps_error=0.05),
            "abs_diff_rdp": abs(rep["epsilon"]["rdp"] - rdp.get_epsilon(1e-5)),
            "abs_diff_prv": abs(rep["epsilon"]["prv"] - prv.get_epsilon(1e-5, eps_error=0.05)),
            "chain": rep["status"], "cap_refusal": refusal}


def step_time(slots, samples, pad, steps: int, lr: float) -> dict:
    with slots.training(1) as params:
        dp = dp_train_steps(slots.model, params, samples, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0,
                            steps=steps + 3, lr=lr, pad_id=pad).step_seconds[3:]
    with slots.training(1) as params:
        opt = torch.optim.AdamW(params, lr=lr)
        plain = []
        slots.model.train()
        for _ in range(steps + 3):
            t0 = time.perf_counter()
            b = collate_train(samples, pad)
            loss = per_sequence_loss(slots.model(**b.model_inputs()).logits, b.labels).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            plain.append(time.perf_counter() - t0)
        slots.model.eval()
    dp_med, plain_med = statistics.median(dp), statistics.median(plain[3:])
    return {"batch": len(samples), "steps": steps, "dp_median_s": dp_med, "plain_median_s": plain_med,
            "ratio": dp_med / plain_med, "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/hom-task.toml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/dp_checks.json")
    args = ap.parse_args()
    cfg = load_config(args.config)
    ws = prepare_workspace(cfg, ["classification"], progress=False)
    slots = _slots(ws, cfg)
    pad = ws.processor.tokenizer.pad_token_id
    samples = ws.train_samples("classification")[:16]
    t0 = time.perf_counter()
    result = {
        "slot": {"rank": cfg.fcit.slot_rank, "targets": cfg.fcit.slot_targets, "parameters": slots.slot_size},
        "clipping": clipping(slots, samples, pad),
        "clipping_float64": _in_float64(slots, samples, pad),
        "noise": noise(slots, samples, pad),
        "accounting": accounting(),
        "step_time": step_time(slots, samples, pad, args.steps, cfg.fcit.lr),
        "machine": {"torch": torch.__version__, "machine": platform.machine()},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = (result["clipping_float64"]["relative_error"] < 1e-5 and result["noise"]["chi2_99_pass"]
          and result["noise"]["changed_outside_slot"] == 0 and result["accounting"]["abs_diff_rdp"] <= 1e-6
          and result["accounting"]["abs_diff_prv"] <= 1e-6 and result["accounting"]["cap_refusal"] is not None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
