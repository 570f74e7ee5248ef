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


def test_a_head_with_token_authentication_runs_only_jobs_that_present_the_token(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from services import ray_cluster

    ray = str(Path(sys.executable).with_name("ray"))
    token = "cluster-token-for-tests-7f3a9c"

    def submit(**auth):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return subprocess.run([ray, "job", "submit", "--address", address, "--", "python", "-c", "print(6 * 7)"],
                              capture_output=True, text=True, timeout=300, env={**env, **auth})

    with ray_cluster(nodes=1, cpus_per_node=1, token=token) as address:
        anonymous = submit()
        wrong = submit(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="guess")
        right = submit(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    assert anonymous.returncode != 0 and "Missing authentication token" in anonymous.stdout + anonymous.stderr
    assert wrong.returncode != 0 and "invalid or incorrect" in wrong.stdout + wrong.stderr
    assert right.returncode == 0 and "42" in right.stdout and "succeeded" in right.stdout, right.stdout + right.stderr
