"""The release inventory: everything derived from a client's private data that leaves the client,
and whether the printed epsilon covers it.

The printed epsilon is a guarantee for one *sample* under add/remove-one neighbours (a dataset and
the same dataset with one sample more or less), for the releases marked ``covered``. Everything else
in the list leaves the client without noise; the audit report and threat_model.md §1 show this
table, and `tests/compliance/test_release_inventory.py` keeps the two in step with this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Release", "INVENTORY", "inventory", "RELATION"]

#: The neighbouring relation the epsilon is computed, capped and reported under.
RELATION = "add/remove one sample of the client's data"


@dataclass(frozen=True)
class Release:
    id: str
    what: str
    #: "local", "distributed" or "both" (DP modes the row applies to).
    modes: str
    covered: bool
    #: How it is covered (mechanism, accountant), or why it is not.
    how: str

    def as_dict(self) -> dict:
        return asdict(self)


INVENTORY: tuple[Release, ...] = (
    Release("update-local", "local DP-SGD: the slot's weight change after the round's noised steps", "local", True,
            "Gaussian (Opacus), RDP and PRV; q = dp.sample_rate, steps = round(local_epochs / q) and the divisor "
            "fcit.local_batch_size are public, so a neighbour runs the same mechanism"),
    Release("update-distributed", "distributed DP: the encoded sum of per-sample clipped gradients and the count "
            "coordinate, inside the masked sum", "distributed", True,
            "Skellam shares summed to at least mu over any t survivors (c colluders), Skellam RDP; q = "
            "dp.sample_rate, one release per round; the coordinator's divide by the noisy count and its server "
            "step are post-processing"),
    Release("update-weight", "the FedAvg weight that goes with an update", "both", True,
            "a public constant under DP (1 per client; distributed: the noisy count of the same mechanism); "
            "the exact n_k is not sent"),
    Release("global-weights", "the global slot weights (shipped in the global state, used at inference)", "both",
            True, "post-processing of the covered updates, given the slot choices below"),
    Release("identity-token", "the identity token and the count beside it, per stage: from S (the sum of the "
            "stage instructions' unit embeddings) and n_k", "both", True,
            "one Gaussian mechanism on (S / dp.token_sigma, n / dp.token_count_sigma), sensitivity 1 per sample's "
            "unit embedding plus one count, charged to the task's account before its noise is drawn (journal kind "
            "token; RDP and PRV); the uploaded token is the noisy S normalised, the count the noisy n"),
    Release("token-block", "which token block a client writes (a known slot it matched at tau, or a SimHash "
            "bucket), with per-block client counts", "both", True,
            "post-processing of the noisy token; the per-block client counts are participation (below)"),
    Release("slot-choice", "which active slot a client trains each round (per-slot client counts)", "both",
            True, "the closest global token to the client's noisy token: post-processing"),
    Release("dko-decisions", "DKO's decisions and the global tokens: slots opened, matched or withheld, shipped "
            "in the global state and used by SSA at inference", "both", True,
            "functions of the noisy tokens, their noisy counts and block choices (post-processing), and of "
            "participation"),
    Release("participation", "participation and refusals: no data for the stage (n_k = 0), delta >= 1/n_k, an "
            "encoding that could wrap, a spent budget (with the epsilon spent); which clients sit in which token "
            "block or slot", "both", False,
            "one bit, or a reason text, per refused round; the epsilon in a budget refusal is a function of the "
            "public mechanism parameters and the client's participation"),
    Release("timing", "how long a client takes to train and answer", "both", False,
            "a side channel (it grows with n_k); nothing pads it"),
)


def inventory(mode: str | None = None) -> list[dict]:
    """The rows for DP ``mode`` ("local" or "distributed"; None: all), as dicts."""
    return [r.as_dict() for r in INVENTORY if mode is None or r.modes in ("both", mode)]
