"""The Ray backend's options, without a cluster: resources, pool sizing, client placement, and the
command line's refusals."""

from __future__ import annotations

import pytest

from secure_fcit.cli import main
from secure_fcit.errors import ConfigError
from secure_fcit.fcit.ray_backend import RayOptions, assign_clients, parse_resources, pool_size


def test_client_resources_parse_and_bad_items_are_named():
    assert parse_resources("num_cpus=1,num_gpus=0.1") == {"num_cpus": 1.0, "num_gpus": 0.1}
    assert parse_resources("num_gpus=0.5") == {"num_cpus": 1.0, "num_gpus": 0.5}
    for bad, named in [("cpus=1", "cpus=1"), ("num_cpus", "num_cpus"), ("num_gpus=lots", "lots"),
                       ("num_cpus=-1", "num_cpus"), ("num_cpus=0", "num_cpus > 0")]:
        with pytest.raises(ConfigError, match=named):
            parse_resources(bad)


def test_the_pool_fits_the_nodes_not_just_their_sum():
    two_nodes = [{"CPU": 1.0}, {"CPU": 1.0}]
    assert pool_size(RayOptions(), 50, two_nodes) == 2
    assert pool_size(RayOptions(resources={"num_cpus": 0.25}), 50, two_nodes) == 8
    assert pool_size(RayOptions(resources={"num_cpus": 0.25}), 3, two_nodes) == 3  # one per client at most
    assert pool_size(RayOptions(actors=4, resources={"num_cpus": 0.5}), 50, two_nodes) == 4
    # 0.4 + 0.4 fit a node, a third does not: 5 actors would leave one waiting forever
    with pytest.raises(ConfigError, match="hold 4 at once"):
        pool_size(RayOptions(actors=5, resources={"num_cpus": 0.4}), 50, two_nodes)
    gpu = [{"CPU": 16.0, "GPU": 1.0}]
    assert pool_size(RayOptions(resources={"num_cpus": 1, "num_gpus": 0.125}), 50, gpu) == 8
    with pytest.raises(ConfigError, match="fits an actor"):
        pool_size(RayOptions(resources={"num_cpus": 1, "num_gpus": 0.5}), 50, [{"CPU": 4.0}])
    with pytest.raises(ConfigError, match="--actors must be >= 1"):
        pool_size(RayOptions(actors=0), 50, two_nodes)


def test_clients_are_dealt_round_robin_and_no_actor_is_empty():
    assert assign_clients([4, 0, 2, 1, 3], 2) == [[0, 2, 4], [1, 3]]
    assert assign_clients([0, 1], 5) == [[0], [1]]
    groups = assign_clients(list(range(1000)), 16)
    assert sorted(c for g in groups for c in g) == list(range(1000)) and {len(g) for g in groups} == {62, 63}
    with pytest.raises(ConfigError):
        assign_clients([], 2)


def test_ray_flags_without_the_ray_backend_are_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    assert main(["simulate", "--config", str(cfg), "--actors", "2"]) != 0
    assert "go with --backend ray" in capsys.readouterr().err
