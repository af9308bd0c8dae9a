"""The federation folder: who takes part in which stage (the roster) and each client's data.

``python -m secure_fcit deploy prepare --config FILE --out DIR`` partitions the configured
benchmark exactly as the simulation does and writes:

- ``DIR/roster.json``: the public schedule: per stage its tasks, its member client ids and (Het)
  its client groups; the server draws cohorts from it as the simulation does. It names no sample.
- ``DIR/clients/<id>/stage-NN/train.json`` (+ ``images/``): each client's own LLaVA-JSON data per
  stage, the only place its samples live. A real site writes the same layout from its own data.

``enrol`` (``deploy prepare`` without ``--no-certs``) adds the certificates: ``DIR/pki`` is the
operator's (the CA key: keep it offline), ``DIR/server-certs`` the server's bundle and
``DIR/clients/<id>/certs`` each site's, with only its own private key.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..data.schedule import Scenario, Stage
from ..errors import ConfigError
from ..protocols.interfaces import ScenarioSchedule

__all__ = ["Roster", "prepare_federation", "load_roster", "stage_dir", "ROSTER_FILE", "enrol"]

ROSTER_FILE = "roster.json"
_VERSION = 1


def stage_dir(data: Path, stage: int) -> Path:
    return Path(data) / f"stage-{stage:02d}"


def _client_id(client: int) -> str:
    from ..fcit.simulate import client_id

    return client_id(client)


@dataclass(frozen=True)
class Roster:
    """The public schedule of a federation (see module docstring)."""

    scenario: Scenario  # stages with members only: no sample indices

    @property
    def n_stages(self) -> int:
        return len(self.scenario.stages)

    @property
    def clients(self) -> tuple[str, ...]:
        return tuple(_client_id(c) for c in range(self.scenario.n_clients))

    @property
    def stage_tasks(self) -> list[list[str]]:
        return [list(s.tasks) for s in self.scenario.stages]

    def schedule(self) -> ScenarioSchedule:
        return ScenarioSchedule(self.scenario, _client_id)

    def to_json(self) -> dict[str, Any]:
        sc = self.scenario
        return {
            "version": _VERSION,
            "setting": sc.setting, "kind": sc.kind, "n_clients": sc.n_clients,
            "clients_per_round": sc.clients_per_round, "beta": sc.beta, "seed": sc.seed,
            "stages": [
                {"tasks": list(s.tasks), "eval_tasks": list(s.eval_tasks),
                 "members": [_client_id(c) for c in s.clients],
                 "groups": [[_client_id(c) for c in g] for g in s.groups],
                 "group_tasks": [list(t) for t in s.group_tasks]}
                for s in sc.stages
            ],
        }


def _index(name: str, n_clients: int, where: str) -> int:
    prefix = "client-"
    if not isinstance(name, str) or not name.startswith(prefix) or not name[len(prefix):].isdigit():
        raise ConfigError(f"{where}: {name!r} is not a client id of the form client-NNN")
    index = int(name[len(prefix):])
    if not 0 <= index < n_clients:
        raise ConfigError(f"{where}: {name!r} is outside the roster's {n_clients} clients")
    return index


def load_roster(path: str | Path, config: Config | None = None) -> Roster:
    """Read ``roster.json``; with ``config``, refuse a roster of another scenario than the config's."""
    path = Path(path)
    if path.is_dir():
        path = path / ROSTER_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"roster {path} does not exist (run `python -m secure_fcit deploy prepare`)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"roster {path} is not JSON: {exc}") from None
    try:
        if raw["version"] != _VERSION:
            raise ConfigError(f"roster {path} has version {raw['version']!r}, this build reads {_VERSION}")
        n = int(raw["n_clients"])
        stages = []
        for i, s in enumerate(raw["stages"]):
            where = f"{path} stage {i}"
            members = sorted(_index(m, n, where) for m in s["members"])
            stages.append(Stage(
                index=i, tasks=tuple(s["tasks"]), eval_tasks=tuple(s["eval_tasks"]),
                client_data={c: () for c in members},
                groups=tuple(tuple(_index(m, n, where) for m in g) for g in s["groups"]),
                group_tasks=tuple(tuple(t) for t in s["group_tasks"]),
            ))
        scenario = Scenario(raw["setting"], raw["kind"], n, int(raw["clients_per_round"]), float(raw["beta"]),
                            int(raw["seed"]), tuple(stages))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"roster {path} is malformed: {exc!r}") from None
    if config is not None:
        sc = config.scenario
        mine = (sc.setting, sc.kind, sc.n_clients, sc.clients_per_round, sc.beta, config.seed)
        theirs = (scenario.setting, scenario.kind, scenario.n_clients, scenario.clients_per_round, scenario.beta,
                  scenario.seed)
        if mine != theirs:
            raise ConfigError(f"roster {path} is for (setting, kind, clients, per round, beta, seed) {theirs}; "
                              f"the config says {mine}")
    return Roster(scenario)


def prepare_federation(config: Config, out: str | Path, progress: bool = True) -> tuple[Roster, dict[str, Path]]:
    """Write the roster and every client's data folders under ``out`` (see module docstring)."""
    from ..fcit.simulate import scenario_for, stream_tasks
    from ..fcit.workspace import prepare_workspace

    out = Path(out)
    if (out / ROSTER_FILE).exists():
        raise ConfigError(f"{out / ROSTER_FILE} exists; prepare into a new folder (nothing is overwritten)")
    ws = prepare_workspace(config, stream_tasks(config), progress=progress)
    scenario = scenario_for(config, ws)
    folders: dict[str, Path] = {}
    for stage in scenario.stages:
        for client, parts in stage.client_data.items():
            cid = _client_id(client)
            folder = stage_dir(out / "clients" / cid, stage.index)
            (folder / "images").mkdir(parents=True, exist_ok=True)
            records = []
            for task, idx in parts:
                train = ws.train_records(task)
                for i in idx:
                    rec = train[int(i)]
                    image = f"images/{task}-{rec.image.name}"
                    shutil.copyfile(rec.image, folder / image)
                    turns = []
                    for k, (question, answer) in enumerate(rec.turns):
                        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + question},
                                  {"from": "gpt", "value": answer}]
                    records.append({"id": f"{task}-{rec.id}", "image": image, "conversations": turns})
            (folder / "train.json").write_text(json.dumps(records, indent=1) + "\n")
            # the public task labels of the stage's samples: per-task accounting (dp.per_task)
            (folder / "tasks.json").write_text(json.dumps([t for t, idx in parts if len(idx)]) + "\n")
            folders[cid] = out / "clients" / cid
    roster = Roster(replace_stages(scenario))
    (out / ROSTER_FILE).write_text(json.dumps(roster.to_json(), indent=1) + "\n")
    return roster, folders


def replace_stages(scenario: Scenario) -> Scenario:
    """``scenario`` with its sample indices removed: members only, as the roster publishes it."""
    from dataclasses import replace

    return replace(scenario, stages=tuple(replace(s, client_data={c: () for c in s.clients}) for s in scenario.stages))


def enrol(out: str | Path, federation: str, server_names: list[str], clients: list[str],
          extra: tuple[str, ...] = ()) -> dict[str, Path]:
    """The federation's certificates under ``out`` (see module docstring); ``extra`` clients get a
    certificate in ``pki`` but no site bundle. Returns the server's and each site's folder."""
    from ..crypto.certs import init_federation, issue_client, write_bundles

    out = Path(out)
    init_federation(out / "pki", federation, server_names)
    for client in [*clients, *extra]:
        issue_client(out / "pki", client)
    sites = {c: out / "clients" / c / "certs" for c in clients}
    write_bundles(out / "pki", out / "server-certs", sites)
    return {"server": out / "server-certs", **sites}
