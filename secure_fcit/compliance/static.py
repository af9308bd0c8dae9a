"""Static controls: the operator's own artifacts (config, deployment folder, run state).

Each reads files and never writes: a checkpoint key that is missing is reported, not created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from .catalogue import control, failed, not_applicable, passed, warned
from .policy import Target

__all__: list[str] = []  # controls register themselves in catalogue.CONTROLS

_SECRET_SUFFIXES = (".key", "ckks-secret.ctx")


def _rel(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


@control("SA-1", "static", "Client updates reach the coordinator only through a secure sum (masking or CKKS).",
         "privacy.aggregation of the config is one the policy accepts; 'plaintext' lets the coordinator read "
         "every client's update.",
         ("GDPR Art. 25", "GDPR Art. 32", "HIPAA 164.312(a)(2)(iv)", "NIST SP 800-53 SC-13"))
def aggregation_is_secure(t: Target) -> object:
    agg = t.config.privacy.aggregation
    if agg not in t.policy.aggregations:
        return failed(f"set privacy.aggregation = \"masking\" (or \"ckks\") in {t.config_path or 'the config'}: "
                      f"with {agg!r} the coordinator sees each client's individual update",
                      f"privacy.aggregation = {agg!r}; policy accepts {list(t.policy.aggregations)}")
    return passed(f"privacy.aggregation = {agg!r}", aggregation=agg)


@control("DP-1", "static", "Every release of training data is covered by sample-level differential privacy.",
         "dp.enabled is true and no fixed sigma of 0 (clipping only) is configured.",
         ("GDPR Art. 25", "NIST SP 800-226 eps-delta"))
def dp_is_on(t: Target) -> object:
    dp = t.config.dp
    if not t.policy.require_dp:
        return not_applicable("the policy does not require DP (require_dp = false)")
    if not dp.enabled:
        return failed("set dp.enabled = true (the policy requires DP on every release)", "dp.enabled = false")
    if dp.noise_multiplier == 0:
        return failed("remove dp.noise_multiplier = 0: it clips without noise, which gives no privacy",
                      "dp.noise_multiplier = 0")
    return passed(f"dp.enabled = true, mode {dp.mode!r}, sigma "
                  f"{'derived from the target' if dp.noise_multiplier is None else dp.noise_multiplier}")


def _smallest_task_dataset(t: Target) -> tuple[int | None, str]:
    """The fewest training samples any client holds for one stage, from the deployment's data."""
    if t.deployment is None or not (t.deployment / "clients").is_dir():
        return None, ""
    sizes = {}
    for train in sorted((t.deployment / "clients").glob("*/stage-*/train.json")):
        try:
            sizes[train] = len(json.loads(train.read_text()))
        except (OSError, ValueError):
            continue
    if not sizes:
        return None, ""
    path = min(sizes, key=sizes.get)
    return sizes[path], _rel(path, t.deployment)


@control("DP-2", "static", "The per-client (epsilon, delta) cap is within the policy, and delta < 1/n.",
         "dp.epsilon <= policy max_epsilon, dp.delta <= policy max_delta, and dp.delta below 1 / the fewest "
         "training samples a client holds for one task (counted in the deployment's data when given).",
         ("NIST SP 800-226 eps-delta", "GDPR Art. 25"))
def budget_within_policy(t: Target) -> object:
    dp, pol = t.config.dp, t.policy
    if not dp.enabled:
        return not_applicable("DP is off (see DP-1)")
    evidence = [f"dp.epsilon = {dp.epsilon:g} (policy <= {pol.max_epsilon:g})",
                f"dp.delta = {dp.delta:g} (policy <= {pol.max_delta:g})"]
    n, where = _smallest_task_dataset(t)
    if n is not None:
        evidence.append(f"smallest client task dataset: {n} samples ({where}); 1/n = {1 / max(n, 1):.3g}")
    problems = []
    if dp.epsilon > pol.max_epsilon:
        problems.append(f"lower dp.epsilon from {dp.epsilon:g} to at most {pol.max_epsilon:g}")
    if dp.delta > pol.max_delta:
        problems.append(f"lower dp.delta from {dp.delta:g} to at most {pol.max_delta:g}")
    if n is not None and dp.delta * n >= 1:
        problems.append(f"delta {dp.delta:g} >= 1/{n}: lower dp.delta below {1 / n:.2g} (a delta that large "
                        "allows releasing a sample outright)")
    if problems:
        return failed("; ".join(problems), *evidence)
    return passed(*evidence, epsilon=dp.epsilon, delta=dp.delta, smallest_dataset=n)


@control("DP-3", "static", "The unit of privacy is one training sample of one client, under add/remove-one.",
         "The accounting is per client, per sample; the sampling rate q is public and the batch divisor fixed "
         "(add/remove-one neighbours); per-task accounting composes over a client's tasks by the maximum.",
         ("NIST SP 800-226 unit",))
def unit_of_privacy(t: Target) -> object:
    from ..dp.releases import RELATION

    dp = t.config.dp
    if not dp.enabled:
        return not_applicable("DP is off (see DP-1)")
    scope = "per (client, task), the client's epsilon the maximum over its tasks" if dp.per_task else \
        "one account over the client's whole stream"
    return passed(f"neighbouring relation: {RELATION}", f"accounting: {scope}",
                  f"public Poisson rate q = {dp.sample_rate:g}, clip C = {dp.max_grad_norm:g}")


@control("DP-4", "static", "The trust model is stated: who adds the noise, and how many colluders it tolerates.",
         "Local DP: each client noises its own update. Distributed DP: Skellam shares inside the masked sum, "
         "sized so the t - c honest shares of any t survivors carry the accounted noise.",
         ("NIST SP 800-226 trust",))
def trust_model(t: Target) -> object:
    dp, pv = t.config.dp, t.config.privacy
    if not dp.enabled:
        return not_applicable("DP is off (see DP-1)")
    if dp.mode == "local":
        return passed("dp.mode = 'local': each client adds the whole noise before its update leaves it; "
                      "the coordinator and other clients are untrusted", mode="local")
    if pv.aggregation != "masking":
        return failed(f"distributed DP needs privacy.aggregation = 'masking' (got {pv.aggregation!r})")
    if pv.colluders < t.policy.min_colluders:
        return failed(f"raise privacy.colluders to at least {t.policy.min_colluders} (the policy's collusion bound)",
                      f"privacy.colluders = {pv.colluders}")
    return passed("dp.mode = 'distributed': Skellam noise shares inside the pairwise-masked sum",
                  f"shares sized for t - c honest contributions: threshold {pv.threshold:.4g}, c = {pv.colluders} "
                  "colluding clients; fewer than t survivors: the sum is discarded", mode="distributed",
                  colluders=pv.colluders)


@control("DP-5", "static", "No floating-point noise is open to the precision attack (Mironov 2012).",
         "Distributed DP and dp.noise = 'skellam' use integer noise; local Gaussian noise is float64 and "
         "reported per the policy (warn or fail).",
         ("NIST SP 800-226 pitfalls",))
def floating_point_noise(t: Target) -> object:
    dp = t.config.dp
    if not dp.enabled:
        return not_applicable("DP is off (see DP-1)")
    if dp.mode == "distributed" or dp.noise == "skellam":
        return passed(f"integer Skellam noise (dp.mode = {dp.mode!r}, dp.noise = {dp.noise!r})")
    fix = "set dp.noise = \"skellam\" (or dp.mode = \"distributed\") for integer noise"
    evidence = "dp.noise = 'gaussian' in local mode: float64 Box-Muller noise on ChaCha20"
    return (failed if t.policy.floating_point_noise == "fail" else warned)(fix, evidence)


@control("SA-2", "static", "No client contributes to a cohort smaller than the policy's floor.",
         "privacy.min_cohort (masking) or privacy.ckks_k_min (CKKS) >= policy min_cohort, every round's cohort "
         "fits it, and the small-cohort release policy (fcit.policy) is one the policy accepts.",
         ("GDPR Art. 32", "NIST SP 800-226 trust"))
def cohort_floor(t: Target) -> object:
    pv, fc, sc, pol = t.config.privacy, t.config.fcit, t.config.scenario, t.policy
    if pv.aggregation == "plaintext":
        return not_applicable("no secure sum (see SA-1)")
    floor = pv.ckks_k_min if pv.aggregation == "ckks" else pv.min_cohort
    key = "privacy.ckks_k_min" if pv.aggregation == "ckks" else "privacy.min_cohort"
    release = fc.release_policy(pv.aggregation)
    evidence = [f"{key} = {floor} (policy >= {pol.min_cohort})", f"cohort per round = {sc.clients_per_round}",
                f"small-cohort policy fcit.policy = {fc.policy!r} -> {release!r}, k_min = {fc.k_min}"]
    problems = []
    if floor < pol.min_cohort:
        problems.append(f"raise {key} from {floor} to at least {pol.min_cohort}")
    if release not in pol.small_cohort_policies:
        problems.append(f"set fcit.policy to one of {list(pol.small_cohort_policies)} (now {release!r})")
    if release == "allow-with-dp" and not t.config.dp.enabled:
        problems.append("fcit.policy 'allow-with-dp' needs dp.enabled = true")
    if problems:
        return failed("; ".join(problems), *evidence)
    return passed(*evidence, floor=floor, release_policy=release)


def _walk(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "stage-" not in p.parent.name
                  and not any(part.startswith("stage-") for part in p.relative_to(root).parts))


def _secret_files(root: Path) -> list[Path]:
    return [p for p in _walk(root) if p.name.endswith(_SECRET_SUFFIXES) or p.name == "checkpoint.key"]


def _roots(t: Target) -> list[Path]:
    return [r for r in (t.deployment, t.state) if r is not None and r.is_dir()]


@control("KEY-1", "static", "Every private key and secret file is readable by its owner only (mode 0600).",
         "Every *.key, checkpoint.key and ckks-secret.ctx under the deployment and state folders has no group "
         "or other permission bits.",
         ("NIST SP 800-53 SC-12", "HIPAA 164.312(a)(2)(iv)", "GDPR Art. 32"))
def key_permissions(t: Target) -> object:
    roots = _roots(t)
    if not roots:
        return not_applicable("no --deployment or --state folder given")
    secrets_ = [p for r in roots for p in _secret_files(r)]
    if not secrets_:
        return not_applicable("no key files found under " + ", ".join(map(str, roots)))
    loose = [p for p in secrets_ if p.stat().st_mode & 0o077]
    if loose:
        return failed("chmod 600 " + " ".join(str(p) for p in loose[:6]) + (" ..." if len(loose) > 6 else ""),
                      *(f"{p}: mode {p.stat().st_mode & 0o777:04o}" for p in loose[:10]),
                      f"{len(secrets_) - len(loose)} of {len(secrets_)} key files are 0600")
    return passed(f"{len(secrets_)} key files, all mode 0600", files=[str(p) for p in secrets_])


@control("KEY-2", "static", "The server's folders hold no CA key and no client key.",
         "The deployment's server bundle (server-certs/) and the server's state folder contain no ca.key and "
         "no clients/*.key: with one, the coordinator could act as a client (or mint clients).",
         ("NIST SP 800-53 SC-12", "GDPR Art. 32"))
def server_holds_no_foreign_keys(t: Target) -> object:
    folders = []
    if t.deployment is not None and (t.deployment / "server-certs").is_dir():
        folders.append(t.deployment / "server-certs")
    if t.state is not None and (t.state / "server").is_dir():
        folders.append(t.state / "server")
    if not folders:
        return not_applicable("no server bundle (FED/server-certs) or server state (RUN/server) given")
    foreign = [p for f in folders for p in _walk(f) if p.name == "ca.key" or
               (p.suffix == ".key" and p.name not in ("server.key", "checkpoint.key"))]
    if foreign:
        return failed("remove " + ", ".join(map(str, foreign[:4])) + " from the server's folders; keep ca.key "
                      "offline with the operator and each client key at its site only",
                      *(f"foreign key: {p}" for p in foreign[:10]))
    return passed(*(f"{f}: only server.key / checkpoint.key" for f in folders))


@control("KEY-3", "static", "The coordinator's CKKS context holds no secret key.",
         "With privacy.aggregation = 'ckks', the public context (ckks-public.ctx) loads as public only "
         "(load_public refuses a context with a secret key); no ckks-secret.ctx is in the server's folders.",
         ("NIST SP 800-53 SC-12", "NIST SP 800-53 SC-13"))
def ckks_public_context(t: Target) -> object:
    pv = t.config.privacy
    if pv.aggregation != "ckks":
        return not_applicable(f"privacy.aggregation = {pv.aggregation!r}, not CKKS")
    from ..errors import ConfigError
    from ..protocols.ckks import PUBLIC_FILE, SECRET_FILE, load_public

    if not pv.ckks_keys:
        return not_applicable("privacy.ckks_keys is empty: the simulation makes a fresh key pair in memory")
    public = Path(pv.ckks_keys) / PUBLIC_FILE
    if not public.is_file():
        return failed(f"{public} does not exist: run `python -m secure_fcit keys init --out {pv.ckks_keys}`")
    try:
        load_public(public.read_bytes())
    except ConfigError as exc:
        return failed(f"replace {public} with the public context of `keys init`: {exc}")
    stray = [p for f in ([t.state / "server"] if t.state else []) + ([t.deployment / "server-certs"] if t.deployment else [])
             if f.is_dir() for p in f.rglob(SECRET_FILE)]
    if stray:
        return failed("remove the secret context from the server's folders: " + ", ".join(map(str, stray)))
    return passed(f"{public}: public context only, sha256 {hashlib.sha256(public.read_bytes()).hexdigest()[:16]}")


def _certificates(t: Target) -> list[Path]:
    if t.deployment is None:
        return []
    return [p for p in _walk(t.deployment) if p.suffix == ".pem" and p.name != "crl.pem"]


@control("PKI-1", "static", "Every certificate is CA-signed, valid, not close to expiry, and used for its role.",
         "Each *.pem of the deployment parses, is signed by the federation CA, is within its validity with at "
         "least policy min_certificate_days left, and has its role's usage: the CA key_cert_sign + crl_sign, "
         "the server serverAuth, clients clientAuth.",
         ("NIST SP 800-53 SC-8", "NIST SP 800-53 SC-12", "HIPAA 164.312(e)(1)"))
def certificates_valid(t: Target) -> object:
    pems = _certificates(t)
    if not pems:
        return not_applicable("no --deployment folder with certificates given")
    ca_path = t.deployment / "pki" / "ca.pem"
    if not ca_path.is_file():
        ca_path = next((p for p in pems if p.name == "ca.pem"), None)
    if ca_path is None:
        return failed("the deployment has no ca.pem: run `python -m secure_fcit deploy prepare` (or `certs init`)")
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    now = dt.datetime.now(dt.UTC)
    horizon = now + dt.timedelta(days=t.policy.min_certificate_days)
    problems, soonest = [], None
    for path in pems:
        where = _rel(path, t.deployment)
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError as exc:
            problems.append(f"{where}: not a PEM certificate ({exc})")
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(f"{where}: not signed by the federation CA {_rel(ca_path, t.deployment)}")
            continue
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            problems.append(f"{where}: outside its validity {cert.not_valid_before_utc:%Y-%m-%d}.."
                            f"{cert.not_valid_after_utc:%Y-%m-%d}")
        elif cert.not_valid_after_utc < horizon:
            problems.append(f"{where}: expires {cert.not_valid_after_utc:%Y-%m-%d}, within "
                            f"{t.policy.min_certificate_days} days")
        soonest = min(soonest or cert.not_valid_after_utc, cert.not_valid_after_utc)
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        if is_ca:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if not (usage.key_cert_sign and usage.crl_sign) or usage.digital_signature:
                problems.append(f"{where}: a CA certificate must be for certificate and CRL signing only")
            continue
        try:
            eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            problems.append(f"{where}: no extended key usage (serverAuth or clientAuth)")
            continue
        role = ExtendedKeyUsageOID.SERVER_AUTH if path.name == "server.pem" else ExtendedKeyUsageOID.CLIENT_AUTH
        if eku != [role]:
            problems.append(f"{where}: extended key usage {[o._name for o in eku]}, expected only {role._name}")
    evidence = [f"{len(pems)} certificates checked against {_rel(ca_path, t.deployment)} "
                f"(sha256 {hashlib.sha256(ca_path.read_bytes()).hexdigest()[:16]})"]
    if soonest is not None:
        evidence.append(f"earliest expiry {soonest:%Y-%m-%d}")
    if problems:
        return failed("reissue the certificates named (`python -m secure_fcit certs issue`, or `deploy prepare`)",
                      *problems[:10], *evidence)
    return passed(*evidence, certificates=len(pems))


@control("PKI-2", "static", "Revocation is in place: a revoked client cannot connect or count in a secure sum.",
         "A crl.pem, where present, is signed by the CA and current, and is published to the server's and every "
         "site's bundle; no roster client that is still scheduled holds a revoked certificate unnoticed.",
         ("NIST SP 800-53 SC-12", "NIST SP 800-53 SC-8"))
def revocation(t: Target) -> object:
    from ..crypto.certs import CRL_FILE, load_revoked
    from ..errors import ConfigError

    if t.deployment is None or not (t.deployment / "pki" / "ca.pem").is_file():
        return not_applicable("no --deployment folder with pki/ given")
    pki = t.deployment / "pki"
    crl = pki / CRL_FILE
    if not crl.is_file():
        return passed("no certificate revoked (no pki/crl.pem); `python -m secure_fcit certs revoke --client ID "
                      "--publish FOLDER` adds one, and the server re-reads it at each connection")
    try:
        serials = load_revoked(crl, pki / "ca.pem")
    except ConfigError as exc:
        return failed(f"re-sign the CRL with `certs revoke`: {exc}")
    bundles = [t.deployment / "server-certs", *sorted((t.deployment / "clients").glob("*/certs"))]
    missing = [b for b in bundles if b.is_dir() and not (b / CRL_FILE).is_file()
               or b.is_dir() and (b / CRL_FILE).read_bytes() != crl.read_bytes()]
    if missing:
        return failed("publish the CRL: `certs revoke --publish` to " + ", ".join(map(str, missing[:4])),
                      f"{len(serials)} serials revoked; {len(missing)} bundles lack the current crl.pem")
    return passed(f"{len(serials)} serials revoked, CRL current and published to {len(bundles)} bundles")


@control("AU-1", "static", "Every client's spend journal verifies: chain intact, signed, no overspend.",
         "`audit` on the run state: every journal's hash chain, signature and anchor verify, the recomputed "
         "epsilon matches the journaled one, and no client is over its cap.",
         ("NIST SP 800-53 AU-9", "NIST SP 800-53 AU-10", "HIPAA 164.312(b)", "HIPAA 164.312(c)(1)"))
def journals_verify(t: Target) -> object:
    from ..dp.report import audit
    from ..errors import PrivacyError

    if t.state is None:
        return not_applicable("no --state given")
    if not t.config.dp.enabled:
        return not_applicable("DP is off: no spend journals")
    certs = t.deployment / "server-certs" if t.deployment is not None else None
    try:
        rep = audit(t.state, progress=False, certs=certs if certs is not None and certs.is_dir() else None)
    except PrivacyError as exc:
        return failed(f"point --state at the run folder holding the clients' privacy/journal.jsonl: {exc}")
    s = rep["summary"]
    eps = "unknown (a journal failed)" if s["failed"] else f"{s['max_epsilon_rdp']:.4g}"
    evidence = [f"{s['verified']}/{s['clients']} journals verified, max epsilon (RDP) {eps}, cap {t.config.dp.epsilon:g}",
                f"over budget: {', '.join(s['over_budget']) or 'none'}; mismatches: {s['mismatches']}"]
    evidence += [f"{c['client']}: {c['status']}" for c in rep["clients"] if c["status"].startswith("FAILED")][:8]
    if s["failed"] or s["over_budget"] or s["mismatches"] or s["unsigned"]:
        return failed("investigate the journals named: a broken chain or signature means a journal was edited "
                      "or replaced; restore it from the site's backup, never re-sign it", *evidence)
    max_eps = s["max_epsilon_rdp"]
    return passed(*evidence, max_epsilon=None if math.isinf(max_eps) else max_eps, clients=s["clients"])


@control("AU-2", "static", "The server's checkpoints are intact: MAC and array digest verify.",
         "Each checkpoint of RUN/server/checkpoints verifies its HMAC-SHA256 under the server's checkpoint key "
         "and the SHA-256 of its arrays.",
         ("HIPAA 164.312(c)(1)", "NIST SP 800-53 AU-9"))
def checkpoints_verify(t: Target) -> object:
    from ..deploy.checkpoint import mac_matches

    if t.state is None or not (t.state / "server" / "checkpoints").is_dir():
        return not_applicable("no server checkpoints (RUN/server/checkpoints) under --state")
    folder = t.state / "server" / "checkpoints"
    key_path = Path(t.config.deploy.checkpoint_key) if t.config.deploy.checkpoint_key else t.state / "server" / "checkpoint.key"
    if not key_path.is_file():
        return failed(f"the checkpoint key {key_path} is missing: checkpoints cannot be verified",)
    key = key_path.read_bytes()
    records = sorted(folder.glob("ckpt-*.json"))
    if not records:
        return not_applicable(f"{folder} holds no checkpoint")
    problems, digests = [], []
    for path in records:
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not mac_matches(key, record):
                problems.append(f"{path.name}: MAC fails (edited, or written under another key)")
                continue
            arrays = folder / Path(record["arrays"]).name
            digest = hashlib.sha256(arrays.read_bytes()).hexdigest()
            if digest != record.get("sha256"):
                problems.append(f"{arrays.name}: sha256 {digest[:16]} does not match its record")
                continue
            digests.append(f"{path.name}: sha256 {digest[:16]}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path.name}: unreadable ({exc})")
    if problems:
        return failed("restore the checkpoints named from a backup, or start the server on a new state folder",
                      *problems[:10])
    return passed(f"{len(records)} checkpoints verified under {key_path.name}", *digests[-3:])
