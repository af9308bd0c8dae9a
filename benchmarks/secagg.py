"""Secure-aggregation figures: masking correctness under dropouts, and the cost of both modes.

    python benchmarks/secagg.py [--part correctness|cost|all] [--out benchmarks/results/secagg.json]

1. ``correctness``: pairwise masking with 5, 50 and 200 clients (complete graph, t = floor(2n/3)+1),
   with 0%, 10% and 30% of the cohort (floor, at least one client) dropping at each of the five stages (advertise, share,
   masked input, consistency, unmask): the largest |masked sum - plaintext sum| of the survivors
   against the fixed-point error bound, and whether the sum completed. Every message goes through
   the wire codec. CKKS: relative L2 error of a 5-client sum of 1M values.
2. ``cost``: for a LoRA-sized vector (1,048,576 values) and the embedded model's real slot update
   (one DISCO slot of the Hom-task run, 116,736 values + 2 counts, weighted by 20 samples), with a
   cohort of 5 (the configs' clients_per_round) and 10: upload bytes per client / fp32 bytes (the
   median client; under CKKS the decryptor also uploads the float64 sum, in the mean), client
   and server seconds per round and as a fraction of one client's local training time (the mean
   Hom-task DISCO round time / 5 clients, from the committed metrics), and CKKS encryption
   throughput; and the CKKS parameter candidates (smallest N at 128-bit security that keeps the
   flooded relative error <= 1e-6).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from secure_fcit.protocols import AggregationRound
from secure_fcit.protocols.ckks import CKKSAggregator, CKKSClient, CKKSParams, create_keys, load_secret
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.layout import update_vector
from secure_fcit.protocols.secagg import MaskingAggregator, MaskingClient, MaskingParams, make_identities

ROOT = Path(__file__).resolve().parents[1]
RID = AggregationRound("bench", 0, 0, 0, "update")
STAGES = {
    "advertise": "KeyAdvert",
    "share": "ShareUpload",
    "masked": "UpdateUpload",
    "consistency": "ListSignature",
    "unmask": "UnmaskShares",
}
RUN = ROOT / "benchmarks/results/fcit/hom-task/b1/disco-s0"


def _masking(n: int, params: MaskingParams):
    ids = [f"c{i:03d}" for i in range(n)]
    identities, directory = make_identities(ids)
    return ids, MaskingAggregator(directory, params), {c: MaskingClient(identities[c], directory, params) for c in ids}


def correctness(sizes=(5, 50, 200), fractions=(0.0, 0.1, 0.3), length=1000) -> dict:
    params = MaskingParams()
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        for fraction in fractions:
            for stage in STAGES if fraction else ["none"]:
                ids, aggregator, clients = _masking(n, params)
                vectors = {c: rng.uniform(-100, 100, length) for c in ids}
                k = max(1, int(np.floor(fraction * n)))  # at least one client drops when fraction > 0
                drop = {} if stage == "none" else {STAGES[stage]: ids[:k]}
                t0 = time.perf_counter()
                run = run_secure_sum(aggregator, clients, vectors, RID, drop=drop)
                seconds = time.perf_counter() - t0
                fp = params.check_cohort(n)
                row = {"clients": n, "drop_fraction": fraction, "stage": stage, "dropped": len(drop.get(STAGES.get(stage, ""), [])),
                       "completed": run.aggregate is not None, "failure": run.failure, "seconds": round(seconds, 2)}
                if run.aggregate is not None:
                    k = run.aggregate.n_contributors
                    truth = sum(vectors[c] for c in run.aggregate.contributors)
                    row.update(contributors=k, max_abs_error=float(np.max(np.abs(run.aggregate.vector - truth))),
                               error_bound=fp.error_bound(k), frac_bits=fp.frac_bits)
                    row["within_bound"] = row["max_abs_error"] <= row["error_bound"]
                rows.append(row)
                print(f"  n={n:3d} drop {fraction:4.0%} at {stage:11s}: "
                      + (f"{row['contributors']:3d} summed, max err {row['max_abs_error']:.2e} <= bound "
                         f"{row['error_bound']:.2e}: {row['within_bound']}" if row["completed"]
                         else f"aborted ({run.failure})") + f"  [{seconds:.1f} s]", flush=True)
    keys = create_keys()
    ids = [f"c{i}" for i in range(5)]
    identities, directory = make_identities(ids)
    cp = CKKSParams()
    rng = np.random.default_rng(1)
    vectors = {c: rng.normal(0, 1.0, 1 << 20) for c in ids}
    clients = {c: CKKSClient(identities[c], directory, keys.secret, cp) for c in ids}
    run = run_secure_sum(CKKSAggregator(directory, keys.public, cp), clients, vectors, RID)
    truth = sum(vectors.values())
    rel = float(np.linalg.norm(run.aggregate.vector - truth) / np.linalg.norm(truth))
    print(f"  CKKS 5 clients x 1,048,576 values: relative L2 error {rel:.2e} (target <= 1e-6), flood bits {cp.flood_bits}")
    return {
        "masking": rows,
        "masking_all_completed_within_bound": all(r.get("within_bound", False) for r in rows),
        "ckks_relative_error": rel,
        "ckks_flood_bits": cp.flood_bits,
    }


SLOT_VALUES = 116_736  # one DISCO slot of the embedded model (rank 8 on every language-model linear)


def _real_slot_update() -> tuple[str, np.ndarray]:
    """The embedded model's real slot update when the run's state is on disk (it is not committed:
    ``simulate`` writes it); otherwise a Gaussian vector of the same size, named as such."""
    path = RUN / "state" / "slots.safetensors"
    if not path.is_file():
        print(f"  ({path.relative_to(ROOT)} is not here: the run's state is not committed; using a "
              f"Gaussian vector of the slot's {SLOT_VALUES:,} values instead)")
        delta = np.random.default_rng(3).normal(0, 0.01, SLOT_VALUES)
        return "slot_sized_gaussian", update_vector(delta, 20, 0, 1)
    from safetensors.numpy import load_file

    slots = load_file(str(path))
    delta = (slots["slot1"] - slots["slot0"]).astype(np.float64) * 0.1  # a weight difference the size of an update
    return "tiny_model_slot", update_vector(delta, 20, 0, 1)


def cost(cohorts=(5, 10)) -> dict:
    metrics = json.loads((RUN / "metrics.json").read_text())
    local_seconds = float(np.mean(metrics["round_seconds"])) / metrics["config"]["scenario"]["clients_per_round"]
    rng = np.random.default_rng(2)
    slot_name, slot_vector = _real_slot_update()
    vectors = {
        "lora_1m": rng.normal(0, 0.01, 1 << 20) * 20,
        slot_name: slot_vector,
    }
    keys = create_keys()
    out: dict = {"local_training_seconds_per_client_round": local_seconds, "rows": []}
    for name, base in vectors.items():
        for n in cohorts:
            ids = [f"c{i:02d}" for i in range(n)]
            identities, directory = make_identities(ids)
            data = {c: base * (1 + 0.01 * i) for i, c in enumerate(ids)}
            fp32 = base.size * 4
            for mode in ("masking", "ckks"):
                if mode == "masking":
                    params = MaskingParams()
                    aggregator = MaskingAggregator(directory, params)
                    clients = {c: MaskingClient(identities[c], directory, params) for c in ids}
                else:
                    cp = CKKSParams()
                    aggregator = CKKSAggregator(directory, keys.public, cp)
                    clients = {c: CKKSClient(identities[c], directory, keys.secret, cp) for c in ids}
                run = run_secure_sum(aggregator, clients, data, RID)
                truth = sum(data.values())
                up = float(np.mean(list(run.bytes_up.values())))
                up_median = float(np.median(list(run.bytes_up.values())))
                client_s = float(np.mean(list(run.client_seconds.values())))
                row = {
                    "vector": name, "values": int(base.size), "cohort": n, "mode": mode,
                    "upload_over_fp32": up / fp32,
                    "upload_median_over_fp32": up_median / fp32,
                    "download_over_fp32": float(np.mean(list(run.bytes_down.values()))) / fp32,
                    "client_seconds": client_s,
                    "server_seconds": run.server_seconds,
                    "client_over_local_training": client_s / local_seconds,
                    "server_over_local_training": run.server_seconds / local_seconds,
                    "relative_error": float(np.linalg.norm(run.aggregate.vector - truth) / np.linalg.norm(truth)),
                }
                out["rows"].append(row)
                print(f"  {name:16s} n={n:2d} {mode:8s}: upload {row['upload_median_over_fp32']:.3f}x fp32 "
                      f"(median; mean {row['upload_over_fp32']:.3f}x with the CKKS decryptor's plaintext sum), "
                      f"client {client_s:.2f} s ({row['client_over_local_training']:.1%} of local training), "
                      f"server {run.server_seconds:.2f} s ({row['server_over_local_training']:.1%}), "
                      f"rel. error {row['relative_error']:.1e}", flush=True)
    ctx = load_secret(keys.secret)
    x = rng.normal(size=1 << 20)
    t0 = time.perf_counter()
    ctx.encrypt(x)
    seconds = time.perf_counter() - t0
    out["ckks_encrypt_values_per_second"] = x.size / seconds
    print(f"  CKKS encryption: {x.size / seconds:,.0f} values/s (1,048,576 values in {seconds:.2f} s)")
    return out


def ckks_parameters(n: int = 5, std: float = 0.05) -> list[dict]:
    """Why N = 4096 with a 60 + 49-bit modulus: each candidate is SEAL-accepted at 128-bit security;
    ``n`` seeded symmetric ciphertexts of N values ~ Normal(0, std) summed, decrypted and flooded
    like the decryptor does (2^2 x the error estimate at that N and scale)."""
    import tenseal.sealapi as seal

    from secure_fcit.protocols.ckks import _Scratch

    out = []
    for degree, coeffs, scale_bits in [(2048, [54], 34), (4096, [49, 60], 36), (4096, [60, 49], 40)]:
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(degree, coeffs))
        ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        key = seal.KeyGenerator(ctx).secret_key()
        enc, dec, ev = seal.Encryptor(ctx, key), seal.Decryptor(ctx, key), seal.Evaluator(ctx)
        encoder, scratch = seal.CKKSEncoder(ctx), _Scratch()
        rng = np.random.default_rng(0)
        xs = [rng.normal(0, std, degree) for _ in range(n)]
        total, size = None, 0
        for x in xs:
            plain = seal.Plaintext()
            encoder.encode((x[0::2] + 1j * x[1::2]).tolist(), 2.0**scale_bits, plain)
            raw = scratch.save(enc.encrypt_symmetric(plain))
            size = len(raw)
            ct = seal.Ciphertext()
            scratch.load(ct, raw, ctx)
            if total is None:
                total = ct
            else:
                summed = seal.Ciphertext()
                ev.add(total, ct, summed)
                total = summed
        plain = seal.Plaintext()
        dec.decrypt(total, plain)
        z = np.asarray(encoder.decode_complex(plain))
        y = np.empty(degree)
        y[0::2], y[1::2] = z.real, z.imag
        flood = 4 * 6 * 3.2 * np.sqrt(degree * n) / 2.0**scale_bits
        truth = sum(xs)
        flooded = y + flood * rng.normal(size=degree)
        row = {"N": degree, "coeff_modulus_bits": coeffs, "scale_bits": scale_bits,
               "upload_over_fp32": size / (4 * degree),
               "relative_error": float(np.linalg.norm(y - truth) / np.linalg.norm(truth)),
               "relative_error_flooded": float(np.linalg.norm(flooded - truth) / np.linalg.norm(truth))}
        row["meets_1e-6"] = row["relative_error_flooded"] <= 1e-6
        out.append(row)
        print(f"  N={degree} modulus {coeffs} scale 2^{scale_bits}: upload {row['upload_over_fp32']:.2f}x fp32, "
              f"relative error {row['relative_error']:.1e}, flooded {row['relative_error_flooded']:.1e} "
              f"(<= 1e-6: {row['meets_1e-6']})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("correctness", "cost", "all"), default="all")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/secagg.json"))
    args = parser.parse_args(argv)
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = {"python": sys.version.split()[0], "platform": platform.platform()}
    if args.part in ("correctness", "all"):
        print("correctness (masked sum vs plaintext sum):")
        results["correctness"] = correctness()
    if args.part in ("cost", "all"):
        print("CKKS parameters (128-bit security, 5 fresh ciphertexts summed):")
        results["ckks_parameters"] = ckks_parameters()
        print("cost per round:")
        results["cost"] = cost()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
