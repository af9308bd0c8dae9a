from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fcit.protocols import layout as L


def test_token_vector_layout_and_split():
    token = np.array([0.6, 0.8])
    vector = L.token_vector(token, 5, block=2, n_blocks=4)
    assert vector.size == L.token_vector_length(4, 2) == 16
    np.testing.assert_array_equal(vector[8:12], [3.0, 4.0, 5.0, 1.0])  # block 2: n*mu, n, 1
    assert np.count_nonzero(vector) == 4
    sums, samples, clients = L.split_token_sum(vector + L.token_vector(token, 2, 2, 4), 4, 2)
    np.testing.assert_allclose(sums[2] / samples[2], token)
    assert clients.tolist() == [0, 0, 2, 0]


def test_token_block_is_the_best_known_token_at_tau_else_the_bucket_after_the_known_blocks():
    planes = L.simhash_planes(bytes(32), 8, 2)
    known = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert L.token_block(np.array([0.62, 0.78]), known, 0.9, planes) == 2  # best of slots 1 and 2
    assert L.token_block(np.array([0.1, 1.0]), known, 0.9, planes) == 1
    far = np.array([-1.0, -0.2])  # no known token within tau
    assert L.token_block(far, known, 0.9, planes) == 3 + L.simhash_bucket(far, planes)
    assert L.token_block(far, np.zeros((0, 2)), 0.9, planes) == L.simhash_bucket(far, planes)
    assert L.token_block(np.array([0.62, 0.78]), known, 1.0, planes) == 3 + L.simhash_bucket(np.array([0.62, 0.78]), planes)


def test_update_vector_layout_and_split():
    delta = np.array([1.0, -2.0, 0.5])
    vector = L.update_vector(delta, 4, position=1, n_active=2)
    assert vector.size == L.update_vector_length(2, 3) == 10
    np.testing.assert_array_equal(vector, [0, 0, 0, 4, -8, 2, 0, 4, 0, 1])
    sums, samples, clients = L.split_update_sum(vector, 2, 3)
    np.testing.assert_array_equal(sums[1] / samples[1], delta)
    assert clients.tolist() == [0, 1]


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 6), st.integers(2, 20))
def test_simhash_planes_are_deterministic_and_buckets_in_range(seed, bits, dim):
    planes = L.simhash_planes(seed, 1 << bits, dim)
    assert planes.shape == (bits, dim)
    np.testing.assert_array_equal(planes, L.simhash_planes(seed, 1 << bits, dim))
    token = np.random.default_rng(0).standard_normal(dim)
    assert 0 <= L.simhash_bucket(token, planes) < 1 << bits
    assert L.simhash_bucket(token, planes) == L.simhash_bucket(3.0 * token, planes)  # scale-free


def test_choose_slot_is_argmax_cosine_among_active_slots():
    tokens = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], np.float32)
    assert L.choose_slot(np.array([0.9, 0.1]), tokens, (0, 1, 2)) == 0
    assert L.choose_slot(np.array([0.9, 0.1]), tokens, (1, 2)) == 2
