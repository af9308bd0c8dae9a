"""An organisation's thresholds (``--policy POLICY.toml``) and what a compliance run looks at.

The policy file is flat TOML; unknown keys are refused with their name, like the config's.
``configs/policies/compliance.toml`` is the example, and its values are the defaults.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import ConfigError

__all__ = ["Policy", "load_policy", "Target"]


@dataclass(frozen=True)
class Policy:
    """Thresholds the controls compare against. Every field has the example file's default."""

    #: DP must be on for every release of training data.
    require_dp: bool = True
    #: The largest per-client epsilon the organisation accepts (over the whole stream).
    max_epsilon: float = 8.0
    #: The largest delta accepted; it must also stay below 1 / (smallest client dataset).
    max_delta: float = 1e-5
    #: The secure aggregations accepted ("plaintext" lets the coordinator see every update).
    aggregations: tuple[str, ...] = ("masking", "ckks")
    #: The smallest cohort a client may contribute to (privacy.min_cohort, privacy.ckks_k_min).
    min_cohort: int = 5
    #: The small-cohort release policies accepted (fcit.policy resolved for the aggregation).
    small_cohort_policies: tuple[str, ...] = ("refuse", "allow-with-dp")
    #: Certificates must stay valid at least this many days from the run.
    min_certificate_days: int = 30
    #: The most clients assumed to collude with the coordinator that the masking must tolerate.
    min_colluders: int = 1
    #: Local DP-SGD with floating-point Gaussian noise (Mironov 2012): "warn" or "fail".
    floating_point_noise: str = "warn"

    def __post_init__(self) -> None:
        if not self.max_epsilon > 0 or not 0 < self.max_delta < 1:
            raise ConfigError(f"policy: max_epsilon must be > 0 and max_delta in (0, 1), got {self.max_epsilon}, "
                              f"{self.max_delta}")
        if self.min_cohort < 2:
            raise ConfigError(f"policy: min_cohort must be >= 2, got {self.min_cohort}")
        if self.floating_point_noise not in ("warn", "fail"):
            raise ConfigError(f"policy: floating_point_noise must be 'warn' or 'fail', got {self.floating_point_noise!r}")


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return Policy()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"policy {path} cannot be read: {exc}") from None
    names = {f.name: f for f in dataclasses.fields(Policy)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"policy {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(names)})")
    values = {}
    for key, value in data.items():
        default = names[key].default
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"policy {path}: {key} must be a list of strings, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"policy {path}: {key} must be true or false, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"policy {path}: {key} must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, type(default)) or isinstance(value, bool):
            raise ConfigError(f"policy {path}: {key} must be {type(default).__name__}, got {value!r}")
        values[key] = value
    return Policy(**values)


@dataclass
class Target:
    """What one compliance run checks: the config, and optionally a deployment folder (of
    ``deploy prepare`` or ``make demo``'s ``federation/``) and a run's state (a demo run folder,
    or a simulation's output with ``privacy/`` journals)."""

    config: Config
    config_path: Path | None = None
    deployment: Path | None = None
    state: Path | None = None
    policy: Policy = field(default_factory=Policy)
    work: Path | None = None  # scratch folder of the live self-tests (the micro model's cache)
    fast: bool = True  # live audits at their quick setting (the 2-minute run)
    repo: Path | None = None  # a source checkout whose attack tests to run (None: found next to the package)
