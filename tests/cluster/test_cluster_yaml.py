"""ray_cluster.yaml is a valid Ray 2.60 cluster config with the shape the job needs."""
from __future__ import annotations

import copy

import pytest
import yaml
from cluster_helpers import REPO

util = pytest.importorskip("ray.autoscaler._private.util")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_validates_against_rays_own_schema(config):
    prepared = util.prepare_config(copy.deepcopy(config))  # fills provider defaults like `ray up` does
    util.validate_config(prepared)  # jsonschema against ray/autoscaler/ray-schema.json + Ray's own checks


def test_the_validator_rejects_a_typo(config):
    """Negative control: the check above would catch a misplaced field."""
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_spot"]["idle_timeout_minutes"] = 5  # only valid at the top level
    with pytest.raises(Exception, match="idle_timeout_minutes"):
        util.validate_config(util.prepare_config(bad))


def test_cluster_shape(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and "InstanceMarketOptions" not in head["node_config"]
    spot = [t for t in types.values() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    on_demand_gpu = [t for name, t in types.items() if name != config["head_node_type"]
                     and t["resources"].get("GPU") and "InstanceMarketOptions" not in t["node_config"]]
    assert len(spot) == 1 and spot[0]["min_workers"] == 0 and spot[0]["max_workers"] >= 1
    assert spot[0]["resources"]["GPU"] == 1
    assert len(on_demand_gpu) == 1 and on_demand_gpu[0]["priority"] < spot[0]["priority"]
    assert config["idle_timeout_minutes"] > 0
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "scripts/install_neural_renderer.sh" in setup
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0-")  # pinned to the tested Ray
    assert any("--metrics-export-port" in c for c in config["head_start_ray_commands"])
    assert any("--metrics-export-port" in c for c in config["worker_start_ray_commands"])
