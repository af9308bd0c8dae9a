"""Attacks on CKKS aggregation (issue 19, attacks 2, 6 and 8), mounted with the project's own classes.

- Attack 6, silent wrap: honest sums that leave the CKKS plaintext range decrypt to garbage.
- Attack 2, tiny cohorts: a coordinator-chosen cohort {target, colluder} gives the target's input.
- Attack 8, key custody: a stolen or departed key file opens past and future ciphertexts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from secure_fcit.cli import main
from secure_fcit.config import Config, PrivacyConfig, ScenarioConfig, config_from_dict, load_config
from secure_fcit.errors import ConfigError, LocalProtocolError
from secure_fcit.protocols import AggregationRound, UpdateUpload
from secure_fcit.protocols.ckks import (
    PUBLIC_FILE,
    SECRET_FILE,
    SUM_RANGE,
    CKKSAggregator,
    CKKSClient,
    CKKSParams,
    DecryptRequest,
    create_keys,
    load_public,
    load_secret,
    write_keys,
)
from secure_fcit.protocols.drive import run_secure_sum
from secure_fcit.protocols.secagg import make_identities

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def rid(stage: int) -> AggregationRound:
    return AggregationRound("fed", stage, 1, 0, "update")


def relative_error(x: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(x - truth) / np.linalg.norm(truth))


def federation(secret: bytes, ids: list[str], params: CKKSParams, key_paths: dict[str, Path] | None = None):
    identities, directory = make_identities(ids)
    clients = {
        c: CKKSClient(identities[c], directory, secret, params, key_path=(key_paths or {}).get(c)) for c in ids
    }
    return directory, clients


def uploads(transcript: list[bytes]) -> dict[str, bytes]:
    """The ciphertext of each client's upload in a recorded coordinator transcript (signature cut off)."""
    from secure_fcit.protocols import decode

    found = [m for m in (decode(d, 1 << 26) for d in transcript) if isinstance(m, UpdateUpload)]
    return {m.sender: m.payload.tobytes()[64:] for m in found}


# ----------------------------------------------------------------------------- attack 6: silent wrap
class _UncheckedParams(CKKSParams):
    """The pre-fix behaviour: no range check (the positive control only)."""

    def __post_init__(self) -> None:
        pass

    def check_cohort(self, n: int) -> None:
        pass


def test_ckks_sum_beyond_the_plaintext_range_is_refused_at_load_naming_the_numbers():
    """No adversary (honest clients, a misconfigured federation): four contributions of 2e5 sum to
    8e5, beyond the CKKS plaintext range, and used to decrypt to -2.49e5 with no error. The config
    is refused at load, before any round, with a message naming 2e5, 4, 8e5 and the range; the
    classes refuse the cohort at ``begin`` on both sides and a client refuses a value beyond its bound."""
    keys = create_keys()
    ids = [f"c{i}" for i in range(4)]
    vectors = {c: np.full(4096, 2e5) for c in ids}
    # Positive control: without the check, the honest sum wraps around silently.
    unchecked = _UncheckedParams(k_min=2, bound=2e5)
    directory, clients = federation(keys.secret, ids, unchecked)
    wrapped = run_secure_sum(CKKSAggregator(directory, keys.public, unchecked), clients, vectors, rid(0))
    assert wrapped.failure is None
    assert wrapped.aggregate.vector[0] == pytest.approx(8e5 - 2**20, abs=1.0)  # -248576, no error raised
    # The fix, at config load: refused before any round, naming the numbers.
    data = {"scenario": {"n_clients": 4, "clients_per_round": 4},
            "privacy": {"aggregation": "ckks", "ckks_k_min": 2, "ckks_bound": 2e5}}
    with pytest.raises(ConfigError) as refused:  # 2e5 cannot even carry two contributions (4e5)
        config_from_dict(data)
    assert all(n in str(refused.value) for n in ("200000", "400000", f"{SUM_RANGE:g}", "wrap around", "ckks_bound"))
    data = {"scenario": {"n_clients": 6, "clients_per_round": 5},  # 7e4 carries a round of 5 (3.5e5) ...
            "privacy": {"aggregation": "ckks", "ckks_bound": 7e4}}
    with pytest.raises(ConfigError) as refused:  # ... not the token phase of all 6 clients (4.2e5)
        config_from_dict(data)
    assert all(n in str(refused.value) for n in ("n_clients = 6", "6 contributions", "70000", "420000",
                                                 f"{SUM_RANGE:g}", "at most 5"))
    # ... and in the classes: params that cannot even carry k_min contributions, a too-large cohort
    # on both sides of a sum, and a client asked to encrypt a value beyond its bound.
    with pytest.raises(ConfigError, match="2 contributions .* can reach 400000"):
        CKKSParams(k_min=2, bound=2e5)
    params = CKKSParams(k_min=2, bound=9e4)  # 4 x 9e4 = 3.6e5 fits; 5 x 9e4 = 4.5e5 does not
    directory, clients = federation(keys.secret, ids, params)
    with pytest.raises(ConfigError, match="5 contributions .* can reach 450000"):
        CKKSAggregator(directory, keys.public, params).begin(rid(0), [*ids, "c4"], 4096)
    with pytest.raises(ConfigError, match="can reach 450000"):
        clients["c0"].begin(rid(0), [*ids, "c4"], vectors["c0"], lambda payload, encoding: None)
    with pytest.raises(LocalProtocolError, match="magnitude 200000 exceeds privacy.ckks_bound 90000"):
        clients["c0"].begin(rid(0), ids, vectors["c0"], lambda payload, encoding: None)
    # A config that fits sums correctly, at 97% of the range.
    fits = {c: np.full(4096, 9e4) for c in ids}
    result = run_secure_sum(CKKSAggregator(directory, keys.public, params), clients, fits, rid(0))
    np.testing.assert_allclose(result.aggregate.vector, 3.6e5, rtol=1e-9)
    data["scenario"]["n_clients"] = 5
    assert config_from_dict(data).privacy.ckks().max_cohort() == 5


# ----------------------------------------------------------------------------- attack 2: tiny cohorts
def test_ckks_clients_refuse_a_coordinator_chosen_pair_below_their_own_floor():
    """Malicious coordinator with one colluding client (no use of the colluder's key): it runs a
    CKKS sum over {target, colluder} and subtracts the colluder's input. Clients on the default
    config (ckks_k_min = 5, their own floor; no message carries a k_min) refuse to confirm the
    list, so the coordinator ends with no aggregate. Positive control: clients configured with
    k_min = 2 hand it the target's exact input."""
    assert PrivacyConfig().ckks_k_min == 5 and PrivacyConfig().ckks().k_min == 5
    for cls in (DecryptRequest, UpdateUpload):
        assert not any("k_min" in f.name for f in dataclasses.fields(cls))  # the floor never travels
    keys = create_keys()
    ids = ["colluder", "target"]
    rng = np.random.default_rng(2)
    vectors = {c: rng.normal(0, 10, 3000) for c in ids}
    coordinator_params = CKKSParams(k_min=2)  # the coordinator lowers its own floor; the clients' counts

    def attack(client_params: CKKSParams):
        directory, clients = federation(keys.secret, ids, client_params)
        run = run_secure_sum(CKKSAggregator(directory, keys.public, coordinator_params), clients, vectors, rid(0))
        recovered = None if run.aggregate is None else run.aggregate.vector - vectors["colluder"]
        return run, recovered

    control, recovered = attack(CKKSParams(k_min=2))
    assert relative_error(recovered, vectors["target"]) < 1e-6  # the attack works when the floor is 2
    run, recovered = attack(PrivacyConfig(aggregation="ckks").ckks())
    assert recovered is None and run.aggregate is None
    # The target's refusal, with its reason: its own floor (a malicious colluder would confirm anyway).
    assert "refusing a sum of 2 contributions; k_min = 5" in run.client_errors["target"]


def test_shipped_configs_keep_the_ckks_floor_at_five_or_more():
    """Malicious coordinator: every shipped config gives clients a CKKS floor of at least 5."""
    assert Config().privacy.ckks_k_min >= 5 and ScenarioConfig().clients_per_round >= 5
    for path in sorted(CONFIGS.glob("*.toml")):
        assert load_config(path).privacy.ckks_k_min >= 5, path.name


# ----------------------------------------------------------------------------- attack 8: key custody
def test_ckks_coordinator_plus_one_client_reads_an_individual_upload_a_stated_limit():
    """Coordinator + one colluding client: NOT protected, and stated plainly in the threat model.
    Every client holds the stage's secret key, so the colluder decrypts the target's upload from
    the coordinator's transcript (relative error ~1e-10). Masking has no such single point."""
    keys = create_keys()
    ids = [f"c{i}" for i in range(5)]
    rng = np.random.default_rng(3)
    vectors = {c: rng.normal(0, 1, 3000) for c in ids}
    directory, clients = federation(keys.secret, ids, CKKSParams())
    transcript: list[bytes] = []
    run = run_secure_sum(CKKSAggregator(directory, keys.public, CKKSParams()), clients, vectors, rid(0),
                         transcript=transcript)
    assert run.aggregate.n_contributors == 5
    colluder = clients["c4"].context
    target = colluder.decrypt(colluder.parse(uploads(transcript)["c0"], 3000), 3000)
    assert relative_error(target, vectors["c0"]) < 1e-8  # the limit: the upload is read
    server = load_public(keys.public)  # the coordinator alone cannot
    with pytest.raises(LocalProtocolError, match="cannot decrypt"):
        server.decrypt(server.parse(uploads(transcript)["c0"], 3000), 3000)


def _zeroed(view: Path) -> bool:
    data = view.read_bytes()
    return len(data) > 0 and data == b"\0" * len(data)


def test_a_key_file_stolen_at_stage_s_opens_no_earlier_stage(tmp_path):
    """A thief of a client's key file, taken at stage 1, with the coordinator's transcript of
    stage 0: the per-stage ratchet rewrote the file on entering stage 1 and destroyed the stage-0
    one (overwritten in place, then unlinked), so the stolen file decrypts the target's stage-0
    upload to noise (relative error >= 0.5) and refuses to step back to stage 0. It does open
    stage 1 (and later stages): what a stolen file still gives is stated in the threat model."""
    folder = tmp_path / "keys"
    secret_path, _ = write_keys(folder)
    public = (folder / PUBLIC_FILE).read_bytes()
    ids = [f"c{i}" for i in range(5)]
    paths = {}
    for c in ids:  # one key file per site, as the ceremony hands them out
        paths[c] = tmp_path / c / SECRET_FILE
        paths[c].parent.mkdir()
        shutil.copy2(secret_path, paths[c])
    os.link(paths["c0"], tmp_path / "c0-stage0-inode")  # a view of the stage-0 file's bytes on disk
    rng = np.random.default_rng(4)
    directory, clients = federation(secret_path.read_bytes(), ids, CKKSParams(), paths)
    stage0 = {c: rng.normal(0, 1, 3000) for c in ids}
    before: list[bytes] = []
    run_secure_sum(CKKSAggregator(directory, public, CKKSParams()), clients, stage0, rid(0), transcript=before)
    assert load_secret(paths["c0"].read_bytes(), paths["c0"]).stage == 0  # stage 0: the file as handed out
    stage1 = {c: rng.normal(0, 1, 3000) for c in ids}
    after: list[bytes] = []
    run = run_secure_sum(CKKSAggregator(directory, public, CKKSParams()), clients, stage1, rid(1), transcript=after)
    assert run.aggregate is not None and relative_error(run.aggregate.vector, sum(stage1.values())) < 1e-6

    stolen = load_secret(paths["c0"].read_bytes(), paths["c0"])  # the thief's copy, taken at stage 1
    assert stolen.stage == 1
    old = stolen.decrypt(stolen.parse(uploads(before)["c0"], 3000), 3000)
    assert relative_error(old, stage0["c0"]) >= 0.5
    with pytest.raises(LocalProtocolError, match="key of stage 0 was destroyed"):
        stolen.advance(0)
    # The stage-0 file is gone: overwritten in place (the other name of its bytes reads zeros), then
    # unlinked; nothing else in the site's folder holds key material.
    assert _zeroed(tmp_path / "c0-stage0-inode")
    assert sorted(p.name for p in paths["c0"].parent.iterdir()) == [SECRET_FILE]
    # What the stolen file does give (stated, not protected): the current stage.
    current = stolen.decrypt(stolen.parse(uploads(after)["c0"], 3000), 3000)
    assert relative_error(current, stage1["c0"]) < 1e-8
    # A client refuses a sum of a stage whose key it destroyed.
    with pytest.raises(LocalProtocolError, match="destroyed"):
        clients["c1"].begin(rid(0), ids, stage0["c1"], lambda payload, encoding: None)


def test_keys_rotate_destroys_the_old_secret_and_separates_the_chains(tmp_path, capsys):
    """A thief of a departed client's key file: after `keys rotate`, the old file opens nothing
    encrypted under the new chain, and a file taken after rotation opens nothing from before it
    (relative errors >= 0.5). The old secret context is destroyed (zeros, then unlinked); the new
    public context still holds no secret, Galois or relinearization key."""
    folder = tmp_path / "keys"
    assert main(["keys", "init", "--out", str(folder)]) == 0
    secret_path = folder / SECRET_FILE
    departed = secret_path.read_bytes()  # the copy a departing member keeps
    os.link(secret_path, tmp_path / "old-inode")
    x = np.random.default_rng(5).normal(0, 1, 3000)
    old_ctx = load_secret(departed)
    before = old_ctx.encrypt(x)

    assert main(["keys", "rotate", "--dir", str(folder)]) == 0
    assert "overwritten and unlinked" in capsys.readouterr().out
    assert _zeroed(tmp_path / "old-inode")  # the old secret's bytes were overwritten, then unlinked
    assert sorted(p.name for p in folder.iterdir()) == [PUBLIC_FILE, SECRET_FILE]
    assert secret_path.stat().st_mode & 0o777 == 0o600
    new_ctx = load_secret(secret_path.read_bytes(), secret_path)  # a file taken after rotation
    assert secret_path.read_bytes() != departed
    server = load_public((folder / PUBLIC_FILE).read_bytes())
    assert not server.secret and not hasattr(server, "decryptor")

    opened_old = new_ctx.decrypt(new_ctx.parse(before, 3000), 3000)
    assert relative_error(opened_old, x) >= 0.5
    after = new_ctx.encrypt(x)
    opened_new = old_ctx.decrypt(old_ctx.parse(after, 3000), 3000)
    assert relative_error(opened_new, x) >= 0.5
    # Honest use of the new chain still round-trips.
    assert relative_error(new_ctx.decrypt(new_ctx.parse(after, 3000), 3000), x) < 1e-8
    assert main(["keys", "rotate", "--dir", str(tmp_path / "empty")]) != 0
    assert "nothing to rotate" in capsys.readouterr().err
