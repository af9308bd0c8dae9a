"""Live self-tests: the installed package's own mechanisms, exercised for seconds each.

They do not read the operator's artifacts (except the config where a figure depends on it): they
show that the code on this machine clips, noises, accounts, masks, authenticates and audits as
claimed. The micro model (`compliance.micro`) carries the DP ones. ``tests/compliance/`` calls the
same functions (``clipping_matches_manual_loop`` and so on) with its own fixtures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import ssl
import tempfile
from pathlib import Path

import numpy as np

from .catalogue import control, failed, passed, warned
from .policy import Target

__all__ = [
    "dp_setup", "clipping_matches_manual_loop", "noise_has_accounted_std", "accountant_matches_dp_accounting",
    "masked_transcript_is_uniform", "seed_or_key_rule_holds", "tls_refuses_bad_peers", "journal_tampering_detected",
]


def _work(t: Target) -> Path:
    if t.work is None:
        t.work = Path(tempfile.mkdtemp(prefix="secure-fcit-compliance-"))
    return t.work


def _in_scratch(t: Target, prefix: str, run):
    """``run(folder)`` in a fresh folder under the run's scratch space, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=_work(t)))
    try:
        return run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _micro(t: Target) -> Path:
    from .micro import micro_model

    cache = Path(t.config.model.cache_dir) if t.config.model.cache_dir else None
    return micro_model(cache)


# ------------------------------------------------------------------ DP-SGD on a real slot
def dp_setup(model_dir: Path):
    """The micro model with one rank-2 slot (nonzero B, so A gets gradients too) and six samples."""
    import torch
    from PIL import Image

    from ..model.chat import encode_sample
    from ..model.loading import load_llava
    from ..model.slots import SlotLoRA

    model, processor = load_llava(model_dir)
    slots = SlotLoRA(model, rank=2, alpha=4.0, targets="all", max_slots=2)
    slots.ensure_slot(1)
    colors = ((200, 20, 20), (20, 20, 200), (20, 200, 20), (200, 200, 20), (20, 200, 200), (90, 90, 90))
    answers = ("red", "blue", "green", "yellow", "cyan", "gray")
    samples = [encode_sample(processor, Image.new("RGB", (32, 32), c), [(f"What color is shape {k}?", a)])
               for k, (c, a) in enumerate(zip(colors, answers, strict=True))]
    gen = torch.Generator().manual_seed(0)
    vec = slots.initial_vector(seed=3) + 0.05 * torch.randn(slots.slot_size, generator=gen).numpy()
    slots.load_slot(1, vec)
    return slots, processor.tokenizer.pad_token_id, samples


def clipping_matches_manual_loop(slots, pad: int, samples, clip: float = 0.05) -> dict:
    """DP-SGD's clipped step (q = 1, no noise, SGD lr 1) against a per-sample loop by hand:
    ``{"relative_error", "min_norm", "clip"}``; every sample is clipped at this C."""
    import torch

    from ..dp.sgd import dp_train_steps
    from ..model.chat import collate_train, per_sequence_loss

    with slots.training(1) as params:
        manual = [torch.zeros_like(p) for p in params]
        norms = []
        for s in samples:
            batch = collate_train([s], pad)
            loss = per_sequence_loss(slots.model(**batch.model_inputs()).logits, batch.labels).sum()
            grads = torch.autograd.grad(loss, params)
            norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
            norms.append(norm)
            for acc, g in zip(manual, grads, strict=True):
                acc += g * min(1.0, clip / (norm + 1e-6))
        before = [p.detach().clone() for p in params]
        dp_train_steps(slots.model, params, samples, noise_multiplier=0.0, max_grad_norm=clip, sample_rate=1.0,
                       steps=1, lr=1.0, pad_id=pad, optimizer="sgd")
        step = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, params, strict=True)])
        for b, p in zip(before, params, strict=True):  # leave the slot as it was
            p.data.copy_(b)
    ref = torch.cat([m.reshape(-1) for m in manual]) / len(samples)
    return {"relative_error": float((step - ref).norm() / ref.norm()), "min_norm": min(norms), "clip": clip}


def noise_has_accounted_std(slots, pad: int, samples, sigma: float = 1.3, clip: float = 0.7, q: float = 0.5) -> dict:
    """One DP step on samples without answer tokens (zero gradients): the step is the noise alone.
    ``{"std", "target", "chi2", "lo", "hi", "touched_only_slot", "dim"}`` with the 99 % interval."""
    import torch
    from scipy import stats

    from ..dp.sgd import dp_train_steps

    silent = [dataclasses.replace(s, labels=torch.full_like(s.labels, -100)) for s in samples]
    before = {n: p.detach().clone() for n, p in slots.model.named_parameters()}
    with slots.training(1) as params:
        names = slots._names[1]
        dp_train_steps(slots.model, params, silent, noise_multiplier=sigma, max_grad_norm=clip, sample_rate=q,
                       steps=1, lr=1.0, pad_id=pad, optimizer="sgd")
    after = {n: p.detach().clone() for n, p in slots.model.named_parameters()}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    noise = torch.cat([(after[n] - before[n]).reshape(-1) for n in names]).double().numpy()
    with torch.no_grad():
        for n, p in slots.model.named_parameters():
            p.copy_(before[n])
    d, target = noise.size, sigma * clip / (q * len(silent))
    stat = float((d - 1) * noise.var(ddof=1) / target**2)
    lo, hi = (float(x) for x in stats.chi2.ppf([0.005, 0.995], d - 1))
    return {"std": float(noise.std()), "target": target, "chi2": stat, "lo": lo, "hi": hi, "dim": d,
            "mean_ok": bool(abs(noise.mean()) < 4 * target / np.sqrt(d)),
            "touched_only_slot": bool(changed) and changed <= set(names)}


@control("LV-1", "live", "Per-sample clipping bounds every sample's contribution to C.",
         "On the micro model, DP-SGD's clipped step equals a per-sample loop by hand (relative error < 1e-5) "
         "with every sample's norm above C.",
         ("NIST SP 800-226 pitfalls", "GDPR Art. 32"))
def live_clipping(t: Target) -> object:
    r = clipping_matches_manual_loop(*dp_setup(_micro(t)))
    evidence = (f"relative error {r['relative_error']:.2e} against the manual loop",
                f"smallest per-sample norm {r['min_norm']:.3g} > C = {r['clip']:g}")
    if r["relative_error"] < 1e-5 and r["min_norm"] > r["clip"]:
        return passed(*evidence, **r)
    return failed("the installed DP-SGD does not clip per sample: check the opacus/peft versions against "
                  "pyproject.toml's bounds", *evidence, **r)


@control("LV-2", "live", "The noise has the accounted standard deviation sigma C / B and touches only the slot.",
         "One DP-SGD step on zero gradients: the chi-square statistic of the step's variance lies in its 99 % "
         "interval around (sigma C / B)^2, its mean is ~0, and no parameter outside the slot moved.",
         ("NIST SP 800-226 pitfalls", "NIST SP 800-226 eps-delta"))
def live_noise(t: Target) -> object:
    r = noise_has_accounted_std(*dp_setup(_micro(t)))
    evidence = (f"std {r['std']:.4g} against sigma C / B = {r['target']:.4g} over {r['dim']} coordinates",
                f"chi-square {r['chi2']:.1f} in [{r['lo']:.1f}, {r['hi']:.1f}]",
                f"only the slot moved: {r['touched_only_slot']}")
    if r["lo"] < r["chi2"] < r["hi"] and r["mean_ok"] and r["touched_only_slot"]:
        return passed(*evidence, **r)
    return failed("the noise does not have the accounted scale: the accounted epsilon would not hold", *evidence, **r)


# ------------------------------------------------------------------ the accountant
def _histories(t: Target) -> list[tuple[str, list[tuple[float, float, int]], float]]:
    from ..dp.accounting import derive_noise_multiplier

    dp = t.config.dp
    out = [("sigma 1.0, q 0.01, 1000 steps", [(1.0, 0.01, 1000)], 1e-5),
           ("sigma 2.27, q 0.8, 18 steps", [(2.27, 0.8, 18)], 1e-5)]
    if dp.enabled:
        q, steps = dp.sample_rate, max(1, t.config.fcit.rounds_per_stage)
        sigma = derive_noise_multiplier([], (0.0, q, steps), dp.epsilon, dp.delta)
        if sigma is not None:
            out.append((f"this config: sigma {sigma:.3f} for epsilon {dp.epsilon:g}, q {q:g}, {steps} steps",
                        [(sigma, q, steps)], dp.delta))
    return out


def accountant_matches_dp_accounting(histories) -> list[dict]:
    """Our RDP and PRV epsilons against Google's dp-accounting (RDP and PLD) for each history."""
    import logging

    import dp_accounting
    from dp_accounting import pld, rdp
    from opacus.accountants import RDPAccountant

    from ..dp.accounting import prv_epsilon, rdp_epsilon

    logging.getLogger("absl").setLevel(logging.ERROR)
    rows = []
    for name, history, delta in histories:
        event = dp_accounting.ComposedDpEvent([
            dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
            for s, q, n in history])
        ref = rdp.RdpAccountant(orders=[float(a) for a in RDPAccountant.DEFAULT_ALPHAS])
        ref.compose(event)
        ref_pld = pld.PLDAccountant(value_discretization_interval=1e-3)
        ref_pld.compose(event)
        ours_rdp, ours_prv = rdp_epsilon(history, delta), prv_epsilon(history, delta)
        e_rdp, e_pld = ref.get_epsilon(delta), ref_pld.get_epsilon(delta)
        rows.append({"history": name, "rdp": ours_rdp, "dp_accounting_rdp": e_rdp, "prv": ours_prv,
                     "dp_accounting_pld": e_pld, "rel_rdp": (ours_rdp - e_rdp) / e_rdp,
                     "rel_prv": (ours_prv - e_pld) / e_pld})
    return rows


@control("LV-3", "live", "The accountant's epsilon agrees with an independent implementation.",
         "RDP within 2 % of Google's dp-accounting RDP, and PRV within 3 % of its PLD accountant, on reference "
         "histories and on the config's own planned history.",
         ("NIST SP 800-226 eps-delta", "NIST SP 800-226 pitfalls"))
def live_accountant(t: Target) -> object:
    try:
        import dp_accounting  # noqa: F401
    except ImportError:
        return warned("pip install 'secure-fcit[compliance]' (Google's dp-accounting) to cross-check the accountant")
    rows = accountant_matches_dp_accounting(_histories(t))
    evidence = [f"{r['history']}: RDP {r['rdp']:.4f} vs {r['dp_accounting_rdp']:.4f} ({r['rel_rdp']:+.2%}), "
                f"PRV {r['prv']:.4f} vs PLD {r['dp_accounting_pld']:.4f} ({r['rel_prv']:+.2%})" for r in rows]
    if all(abs(r["rel_rdp"]) < 0.02 and abs(r["rel_prv"]) < 0.03 for r in rows):
        return passed(*evidence, rows=rows)
    return failed("the accountant disagrees with dp-accounting: do not rely on the reported epsilon until it is "
                  "explained", *evidence, rows=rows)


# ------------------------------------------------------------------ secure aggregation
def _masking(n: int, params=None):
    from ..protocols.secagg import MaskingClient, MaskingParams, make_identities

    params = params or MaskingParams()
    ids = [f"c{i}" for i in range(n)]
    identities, directory = make_identities(ids)
    return params, ids, directory, {c: MaskingClient(identities[c], directory, params) for c in ids}


def masked_transcript_is_uniform(n: int = 5, length: int = 8192, seed: int = 7) -> dict:
    """One masking sum with a captured coordinator transcript: chi-square p-values of each masked
    upload's top and low bytes (against uniform over Z_2^32), and the sum's error."""
    from scipy import stats

    from ..protocols import AggregationRound, UpdateUpload, decode
    from ..protocols.drive import run_secure_sum
    from ..protocols.secagg import MaskingAggregator

    params, ids, directory, clients = _masking(n)
    rng = np.random.default_rng(seed)
    vectors = {c: rng.uniform(-1, 1, length) for c in ids}
    vectors[ids[0]] = np.zeros(length)  # the most structured input there is
    transcript: list[bytes] = []
    rid = AggregationRound("compliance", 1, 2, 0, "update")
    result = run_secure_sum(MaskingAggregator(directory, params), clients, vectors, rid, transcript=transcript)
    pvalues = []
    for data in transcript:
        message = decode(data, 1 << 30)
        if isinstance(message, UpdateUpload):
            masked = message.payload
            for byte in (masked >> 24, masked & 0xFF):
                pvalues.append(float(stats.chisquare(np.bincount(byte.astype(np.int64), minlength=256)).pvalue))
    truth = sum(vectors.values())
    error = float(np.abs(result.aggregate.vector - truth).max()) if result.aggregate is not None else float("inf")
    return {"uploads": len(pvalues) // 2, "min_pvalue": min(pvalues) if pvalues else 0.0, "max_error": error,
            "transcript_bytes": sum(map(len, transcript))}


@control("LV-4", "live", "The coordinator's masked transcript is uniform, and the unmasked sum is correct.",
         "A 5-client masking sum with one all-zero input: each captured upload's top and low bytes pass a "
         "chi-square test against uniform (p > 1e-4), and the sum matches within the fixed point's step.",
         ("GDPR Art. 32", "HIPAA 164.312(a)(2)(iv)", "NIST SP 800-53 SC-13"))
def live_masking(t: Target) -> object:
    r = masked_transcript_is_uniform()
    evidence = (f"{r['uploads']} masked uploads, smallest chi-square p-value {r['min_pvalue']:.3g}",
                f"sum error {r['max_error']:.2e} ({r['transcript_bytes']} transcript bytes)")
    if r["uploads"] == 5 and r["min_pvalue"] > 1e-4 and r["max_error"] < 1e-2:
        return passed(*evidence, **r)
    return failed("the masked uploads are not uniform or the sum is wrong: the masking is broken", *evidence, **r)


def seed_or_key_rule_holds(n: int = 5) -> dict:
    """A lying coordinator asks a share holder for the victim's seed share (the victim survived),
    then for its mask-key share under a second survivor list: refused; a holder shown a list other
    than the one it signed reveals nothing. ``{"refusals": [...], "revealed": [...]}``."""
    from ..errors import RemoteProtocolError
    from ..protocols import AggregationRound, UpdateUpload
    from ..protocols.secagg import MaskingAggregator, UnmaskRequest

    params, ids, directory, clients = _masking(n)
    rid = AggregationRound("compliance", 1, 2, 0, "update")
    aggregator = MaskingAggregator(directory, params)
    aggregator.begin(rid, ids, 16)

    def upload(c):
        return lambda payload, encoding: UpdateUpload(
            federation_id=rid.federation_id, stage=rid.stage, round=rid.round, attempt=rid.attempt,
            sender=c, payload=payload, encoding=encoding)

    pending = [(c, m) for c in ids for m in clients[c].begin(rid, ids, np.ones(16), upload(c))]
    requests: dict[str, UnmaskRequest] = {}
    while pending:
        sender, message = pending.pop(0)
        for recipient, out in aggregator.receive(sender, message):
            if isinstance(out, UnmaskRequest):
                requests[recipient] = out
            else:
                pending += [(recipient, r) for r in clients[recipient].receive(out)]
    victim, holder, other = ids[0], ids[1], ids[2]
    first = clients[holder].receive(requests[holder])[0]
    revealed = [f"{holder} revealed the seed share of survivor {victim}"] if victim in first.seed_owners else []
    forged = dataclasses.replace(requests[holder], survivors=tuple(i for i in ids if i != victim))
    refusals = []
    for who in (holder, other):
        try:
            answer = clients[who].receive(forged)
            revealed.append(f"{who} answered a forged survivor list: key owners {answer[0].key_owners}")
        except RemoteProtocolError as exc:
            refusals.append(f"{who}: {exc}")
    return {"refusals": refusals, "revealed": revealed}


@control("LV-5", "live", "A lying coordinator cannot get both the seed share and the key share of one client.",
         "Malicious coordinator: after a holder revealed a survivor's self-mask seed share, a second unmask request "
         "that calls the same client dropped (to get its mask-key share) is refused by that holder, and by "
         "another holder shown a survivor list other than the one it signed.",
         ("GDPR Art. 32", "NIST SP 800-53 SC-13"))
def live_seed_or_key(t: Target) -> object:
    r = seed_or_key_rule_holds()
    leaked = [x for x in r["revealed"] if "forged" in x]
    if len(r["refusals"]) == 2 and not leaked:
        return passed(*r["revealed"], *r["refusals"])
    return failed("a client answered a second unmask request: the masking is open to the split-view attack",
                  *r["revealed"], *r["refusals"])


# ------------------------------------------------------------------ TLS
def tls_refuses_bad_peers(folder: Path) -> dict[str, str]:
    """A loopback server of the project's TLS layer and four clients: the federation's own (must
    connect with TLS 1.3), one capped at TLS 1.2, one without a certificate, one from a foreign CA.
    Returns ``{client: "connected TLSv1.3" | "refused: ..."}``."""
    from ..crypto.certs import init_federation, issue_client
    from ..errors import RemoteProtocolError
    from ..protocols.tls import accept, client_context, connect, server_context

    fed = "compliance-tls"
    paths = init_federation(folder / "fed", fed, ["127.0.0.1"])
    mine = issue_client(folder / "fed", "client-1")
    init_federation(folder / "other", "other-fed", ["127.0.0.1"])
    stranger = issue_client(folder / "other", "client-1")

    def plain(tls12: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(paths["ca"].cert))
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(mine.cert), str(mine.key))
        return ctx

    contexts = {"federation client": client_context(paths["ca"].cert, mine.cert, mine.key),
                "TLS 1.2 client": plain(True), "client without certificate": plain(False),
                "client of a foreign CA": client_context(paths["ca"].cert, stranger.cert, stranger.key)}
    errors = (RemoteProtocolError, ssl.SSLError, ConnectionError, OSError, TimeoutError)

    async def run() -> dict[str, str]:
        accepted: list[str] = []

        async def handler(reader, writer):
            try:
                conn = await accept(reader, writer, federation_id=fed, allowed={"client-1"}, max_size=1 << 20, timeout=5)
                accepted.append(conn.identity)
            except errors:
                pass

        server = await asyncio.start_server(handler, "127.0.0.1", 0,
                                            ssl=server_context(paths["ca"].cert, paths["server"].cert, paths["server"].key))
        port = server.sockets[0].getsockname()[1]
        out = {}
        for name, ctx in contexts.items():
            before = len(accepted)
            try:
                conn = await connect("127.0.0.1", port, ctx, federation_id=fed, max_size=1 << 20, timeout=5)
                version = conn.writer.get_extra_info("ssl_object").version()
                await asyncio.sleep(0.05)
                out[name] = f"connected {version}" + (" (server accepted it)" if len(accepted) > before else "")
                conn.writer.close()
            except errors as exc:
                out[name] = f"refused: {type(exc).__name__}: {str(exc)[:90]}"
        server.close()
        await server.wait_closed()
        return out

    return asyncio.run(run())


@control("LV-6", "live", "The transport is mutual TLS 1.3: TLS 1.2, missing and foreign certificates are refused.",
         "A live loopback server of the installed package: the federation's client connects with TLS 1.3; a TLS 1.2 "
         "client, a client without a certificate and one whose certificate another CA signed are refused.",
         ("NIST SP 800-53 SC-8", "NIST SP 800-53 SC-13", "HIPAA 164.312(e)(1)", "GDPR Art. 32"))
def live_tls(t: Target) -> object:
    r = _in_scratch(t, "tls-", tls_refuses_bad_peers)
    evidence = [f"{k}: {v}" for k, v in r.items()]
    good = r["federation client"].startswith("connected TLSv1.3")
    bad = [k for k in r if k != "federation client" and not r[k].startswith("refused")]
    if good and not bad:
        return passed(*evidence)
    return failed("the TLS layer accepted a peer it must refuse (or refused the federation's own): "
                  + ", ".join(bad or ["federation client"]), *evidence)


# ------------------------------------------------------------------ journals
def journal_tampering_detected(root: Path) -> dict[str, str]:
    """Two honest ledgers written by the project's ledger, then three forgeries of client-000's
    journal: an edited sigma (chain left), an entry deleted, and a re-chained rewrite signed with
    the forger's key. ``{case: audit status of client-000}``; the honest case must verify."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..config import DPConfig
    from ..dp.journal import SIG_CONTEXT, entry_hash, genesis, public_hex
    from ..dp.ledger import PrivacyLedger
    from ..dp.report import audit

    dp = DPConfig(enabled=True, epsilon=8.0, delta=1e-5, max_grad_norm=1.0, sample_rate=0.4)
    honest = root / "honest" / "privacy"
    for client, rounds in (("client-000", 3), ("client-001", 2)):
        with PrivacyLedger(honest, client, dp) as led:
            for r in range(rounds):
                led.charge(led.plan(0, r, 40, 16, 2.0, 6))

    def status(privacy: Path) -> str:
        rep = audit(privacy, progress=False)
        return next(c["status"] for c in rep["clients"] if c["client"] == "client-000")

    def forged(name: str, transform) -> Path:
        copy = Path(shutil.copytree(honest, root / name / "privacy"))
        journal = copy / "client-000" / "journal.jsonl"
        lines = [json.loads(x) for x in journal.read_text().splitlines()]
        journal.write_text("".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in transform(lines)))
        return copy

    def sigma_edit(lines):
        for e in lines:
            if e.get("kind") == "dp-sgd":
                e["sigma"] = e["sigma"] * 3  # more noise claimed: less spend
                break
        return lines

    def resign(lines):
        key, prev, out = Ed25519PrivateKey.generate(), None, []
        for seq, e in enumerate(sigma_edit(lines)):
            e = {k: v for k, v in e.items() if k not in ("hash", "sig")}
            e.update(seq=seq, prev=prev or genesis("client-000"), key=public_hex(key))
            e["hash"] = entry_hash(e)
            e["sig"] = key.sign(SIG_CONTEXT + e["hash"].encode()).hex()
            prev = e["hash"]
            out.append(e)
        return out

    return {"honest": status(honest),
            "sigma edited": status(forged("edit", sigma_edit)),
            "entry deleted": status(forged("delete", lambda lines: lines[:1] + lines[2:])),
            "re-chained and re-signed": status(forged("resign", resign))}


@control("LV-7", "live", "Tampering with a spend journal is detected by the audit.",
         "Honest ledgers verify; an edited sigma, a deleted entry and a re-chained rewrite signed with another key "
         "each make `audit` report the client FAILED.",
         ("NIST SP 800-53 AU-9", "NIST SP 800-53 AU-10", "HIPAA 164.312(c)(1)", "HIPAA 164.312(b)"))
def live_journal(t: Target) -> object:
    r = _in_scratch(t, "journal-", journal_tampering_detected)
    evidence = [f"{k}: {v}" for k, v in r.items()]
    missed = [k for k, v in r.items() if k != "honest" and not v.startswith("FAILED")]
    if not r["honest"].startswith("FAILED") and not missed:
        return passed(*evidence)
    return failed("the audit did not detect: " + ", ".join(missed or ["(the honest journal failed)"]), *evidence)
