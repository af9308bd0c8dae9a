"""The cryptographic primitives on their own: PRG, fixed point, Shamir, X25519/HKDF, AES-GCM, Ed25519."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from secure_fcit.crypto.fixed_point import MODULUS, FixedPoint
from secure_fcit.crypto.keys import KeyPair, SigningKey, agree, open_sealed, seal, verify
from secure_fcit.crypto.prg import ChaCha20PRG, expand_mask
from secure_fcit.crypto.shamir import combine, split
from secure_fcit.errors import ConfigError, CryptoError


def test_the_prg_is_deterministic_per_seed_and_refuses_short_seeds():
    assert np.array_equal(expand_mask(b"k" * 32, 100), expand_mask(b"k" * 32, 100))
    assert not np.array_equal(expand_mask(b"k" * 32, 100), expand_mask(b"j" * 32, 100))
    with pytest.raises(ValueError, match="32 bytes"):
        ChaCha20PRG(b"short")


def test_masks_look_uniform_over_uint32():
    m = expand_mask(b"\x05" * 32, 200_000)
    counts = np.bincount((m >> np.uint32(24)).astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_normal_draws_have_unit_variance():
    z = ChaCha20PRG(b"\x09" * 32).normal(200_001)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01 and z.size == 200_001


def test_fixed_point_sums_decode_within_the_bound():
    fp = FixedPoint(bound=4.0, frac_bits=16)
    rng = np.random.default_rng(0)
    xs = rng.uniform(-4, 4, size=(50, 1000))
    total = np.zeros(1000, dtype=np.uint64)
    for x in xs:
        total = (total + fp.encode(x)) % MODULUS
    assert np.abs(fp.decode_sum(total, 50) - xs.sum(0)).max() <= fp.error_bound(50)


def test_fixed_point_clips_and_refuses_cohorts_that_could_wrap():
    fp = FixedPoint(bound=1.0, frac_bits=20)
    assert fp.decode_sum(fp.encode(np.array([5.0, -5.0])), 1).tolist() == [1.0, -1.0]
    n = fp.max_contributors()
    fp.check_cohort(n)
    with pytest.raises(ConfigError, match=f"at most {n}"):
        fp.check_cohort(n + 1)
    with pytest.raises(ConfigError, match="bound"):
        FixedPoint(bound=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        fp.encode(np.array([np.nan]))


def test_shamir_recovers_from_any_t_shares_and_not_from_fewer():
    secret = bytes(range(32))
    shares = split(secret, n=7, t=4)
    assert combine({x: shares[x] for x in (2, 5, 6, 7)}, 4) == secret
    assert combine({x: shares[x] for x in (1, 2, 3, 4)}, 4) == secret
    with pytest.raises(CryptoError, match="need 4"):
        combine({x: shares[x] for x in (1, 2, 3)}, 4)
    # Shamir alone does not authenticate shares (AES-GCM on the transport does): a changed share
    # reconstructs another value.
    assert combine({1: shares[1], 2: shares[2], 3: shares[3], 4: shares[4] + 1}, 4) != secret


def test_shamir_refuses_bad_parameters():
    with pytest.raises(CryptoError, match="threshold"):
        split(b"x" * 32, n=3, t=4)
    with pytest.raises(CryptoError, match="32 bytes"):
        split(b"x", n=3, t=2)


def test_x25519_hkdf_agrees_per_pair_and_separates_purposes():
    a, b = KeyPair.generate(), KeyPair.generate()
    assert agree(a, b.public, b"mask") == agree(b, a.public, b"mask")
    assert agree(a, b.public, b"mask") != agree(a, b.public, b"shares")
    with pytest.raises(CryptoError, match="low-order|X25519"):
        agree(a, bytes(32), b"mask")


def test_aes_gcm_binds_the_associated_data():
    key = bytes(range(32))
    sealed = seal(key, b"share", b"from 1 to 2, round 3")
    assert open_sealed(key, sealed, b"from 1 to 2, round 3") == b"share"
    with pytest.raises(CryptoError, match="authentication"):
        open_sealed(key, sealed, b"from 1 to 2, round 4")
    with pytest.raises(CryptoError, match="authentication"):
        open_sealed(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"from 1 to 2, round 3")


def test_ed25519_signatures_verify_and_forgeries_do_not():
    k = SigningKey.generate()
    sig = k.sign(b"survivors: 1,2,3")
    verify(k.public, sig, b"survivors: 1,2,3")
    with pytest.raises(CryptoError, match="signature"):
        verify(k.public, sig, b"survivors: 1,2")
    with pytest.raises(CryptoError, match="signature"):
        verify(SigningKey.generate().public, sig, b"survivors: 1,2,3")
