"""Membership inference by the coordinator against one client's update, its masked upload and the
cohort's sum: secure aggregation leaves the attacker at chance on the upload."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fcit.compliance.empirical import roc_auc
from secure_fcit.compliance.membership import (
    VIEWS,
    auc_null_std,
    membership_settings,
    membership_table,
    tpr_at_fpr,
)
from secure_fcit.errors import ConfigError


def test_auc_and_tpr_at_low_fpr():
    members, nonmembers = np.arange(100, 200.0), np.arange(100.0)
    assert roc_auc(members, nonmembers) == 1.0 and roc_auc(nonmembers, members) == 0.0
    assert roc_auc(np.ones(5), np.ones(7)) == 0.5
    assert tpr_at_fpr(members, nonmembers) == 1.0
    # One non-member (of 100) above every member: 1% FPR still admits it, so the TPR stays 1.
    assert tpr_at_fpr(members, np.append(nonmembers[:99], 1e9)) == 1.0
    assert tpr_at_fpr(members, np.append(nonmembers[:98], [1e9, 1e9])) == 0.0
    assert auc_null_std(100, 100) == pytest.approx(0.041, abs=1e-3)
    with pytest.raises(ConfigError, match="unknown membership knob"):
        membership_settings(m=3)


@pytest.fixture(scope="module")
def no_dp(micro_model_dir):
    return {row["view"]: row for row in membership_table(epsilon=None, model_dir=micro_model_dir, fast=True)}


def test_without_dp_the_plaintext_update_gives_its_members_away(no_dp):
    """Positive control: sigma = 0, the coordinator holds the target's update and the global state."""
    row = no_dp[VIEWS[0]]
    assert row["members"] == row["nonmembers"] == 100
    assert row["auc"] > 0.9 and row["tpr_at_1pct_fpr"] > 0.3, row


def test_the_masked_upload_leaves_the_attacker_at_chance(no_dp):
    """Honest-but-curious coordinator, real masking protocol, no DP: the same attack on the target's
    UpdateUpload from the transcript (decoded with the public fixed point) is at chance, while on
    the plaintext update (above) it is near perfect."""
    row = no_dp[VIEWS[1]]
    assert abs(row["auc"] - 0.5) < 4 * row["auc_null_std"], row
    assert row["tpr_at_1pct_fpr"] < 0.1, row


def test_dp_pulls_the_plaintext_attack_down_and_the_mask_stays_at_chance(micro_model_dir, no_dp):
    rows = {row["view"]: row for row in membership_table(epsilon=8.0, model_dir=micro_model_dir, fast=True)}
    assert set(rows) == set(VIEWS) and 7 < rows[VIEWS[0]]["epsilon"] <= 8
    assert rows[VIEWS[0]]["auc"] < no_dp[VIEWS[0]]["auc"] - 0.1, rows
    assert abs(rows[VIEWS[1]]["auc"] - 0.5) < 4 * rows[VIEWS[1]]["auc_null_std"], rows
    assert 0.5 - 4 * rows[VIEWS[2]]["auc_null_std"] < rows[VIEWS[2]]["auc"] < 0.9, rows
