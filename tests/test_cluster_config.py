"""cluster.yaml is a valid Ray cluster launcher configuration that installs our requirements."""
import json
import os

import yaml
from conftest import ROOT


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads(open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")).read())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert any("requirements.txt" in command for command in config["setup_commands"])
    assert "./requirements.txt" in config["file_mounts"].values()
    assert any("--dashboard-port=8265" in command for command in config["head_start_ray_commands"])
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)  # token authentication everywhere
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the nodes get the token
    assert config["file_mounts"]["~/caspar-trainer/cluster.env"] == "./cluster.env"  # and the MLflow and S3 settings
    assert all(". ~/caspar-trainer/cluster.env" in c for c in starts)  # in Ray's environment, so in every job's
    assert "cluster.env" in (ROOT / ".gitignore").read_text().split()
    # every node: the token and the keys readable by their owner alone, before anything runs
    assert "chmod 600 ~/.ray/auth_token ~/caspar-trainer/cluster.env" in config["setup_commands"][0]
