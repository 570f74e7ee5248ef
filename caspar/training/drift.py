"""How far new rows are from the rows a model was fitted on, feature by feature.

Training leaves a `FeatureProfile` beside the model (`feature_profile.json`): per feature, its range
in the fitted rows and the share of those rows in each of BINS equal-width bins of that range. New
rows (from newer logs, or another MegaMek) are compared with it: the share outside the range, and
the population stability index (PSI) over the same bins plus one below and one above the range.
A feature constant in training cannot move a prediction (caspar.model.network.Normalizer), but a newer
logger writing values there is still worth knowing: it says the model learnt nothing from them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from caspar import tracking

BINS = 10
SHARE_FLOOR = 1e-4  # a bin no row falls in counts as this share, so the PSI stays finite
OUTSIDE_FLAG = 0.01  # a feature with more than 1 % of new rows outside the training range is flagged
PSI_FLAG = 0.2  # the usual threshold of a shift worth acting on


@dataclass
class FeatureProfile:
    minimum: np.ndarray  # [F]
    maximum: np.ndarray  # [F]
    shares: np.ndarray  # [F, BINS + 2]: below the range, BINS bins of it, above (0 for the fitted rows)
    rows: int

    @classmethod
    def fit(cls, features: np.ndarray) -> FeatureProfile:
        """features: [N, F] raw rows (the rows the model's normalisation was fitted on)."""
        minimum, maximum = features.min(axis=0), features.max(axis=0)
        profile = cls(minimum.astype(np.float64), maximum.astype(np.float64), np.zeros((features.shape[1], BINS + 2)),
                      len(features))
        profile.shares = profile.bin_shares(features)
        return profile

    def bin_shares(self, features: np.ndarray) -> np.ndarray:
        """[F, BINS + 2]: the share of rows below the range, in each bin, and above."""
        x = features.astype(np.float64)
        span = np.where(self.maximum > self.minimum, self.maximum - self.minimum, 1.0)
        inner = np.clip(np.floor((x - self.minimum) / span * BINS), 0, BINS - 1).astype(np.int64) + 1
        index = np.where(x < self.minimum, 0, np.where(x > self.maximum, BINS + 1, inner))
        index = np.where(np.isnan(x), BINS + 1, index)  # NaN: outside, like any value never seen
        counts = np.zeros((x.shape[1], BINS + 2))
        np.add.at(counts, (np.broadcast_to(np.arange(x.shape[1]), x.shape), index), 1)
        return counts / max(len(x), 1)

    def to_json(self) -> str:
        return json.dumps({"bins": BINS, "rows": self.rows, "minimum": self.minimum.tolist(),
                           "maximum": self.maximum.tolist(), "shares": np.round(self.shares, 6).tolist()})

    @classmethod
    def from_json(cls, text: str) -> FeatureProfile:
        data = json.loads(text)
        if data.get("bins") != BINS:
            raise ValueError(f"a feature profile of {data.get('bins')} bins; this version reads {BINS}")
        return cls(np.array(data["minimum"]), np.array(data["maximum"]), np.array(data["shares"]), int(data["rows"]))


@dataclass
class Shift:
    feature: str
    outside: float  # share of the new rows outside the training range
    psi: float  # population stability index against the training rows
    constant_in_training: bool

    @property
    def flagged(self) -> bool:
        return self.outside > OUTSIDE_FLAG or self.psi > PSI_FLAG


def shifts(profile: FeatureProfile, features: np.ndarray, names: list[str]) -> list[Shift]:
    """One Shift per feature of the new rows [N, F], largest PSI first."""
    if features.shape[1] != len(profile.minimum):
        raise ValueError(f"the new rows have {features.shape[1]} features, the model {len(profile.minimum)}")
    new = np.maximum(profile.bin_shares(features), SHARE_FLOOR)
    old = np.maximum(profile.shares, SHARE_FLOOR)
    psi = ((new - old) * np.log(new / old)).sum(axis=1)
    outside = profile.bin_shares(features)[:, [0, BINS + 1]].sum(axis=1)
    constant = profile.maximum <= profile.minimum
    result = [Shift(name, float(o), float(p), bool(c)) for name, o, p, c in zip(names, outside, psi, constant)]
    return sorted(result, key=lambda s: -s.psi)


def table(found: list[Shift], limit: int = 25) -> str:
    """The flagged features as a Markdown table (the `limit` largest shifts)."""
    flagged = [s for s in found if s.flagged]
    lines = ["| feature | outside the training range | PSI | constant in training |", "|---|---|---|---|"]
    lines += [f"| `{s.feature}` | {s.outside:.1%} | {s.psi:.3f} | {'yes' if s.constant_in_training else ''} |"
              for s in flagged[:limit]]
    if len(flagged) > limit:
        lines.append(f"| … {len(flagged) - limit} more | | | |")
    return "\n".join(lines) + "\n"


def check(config) -> list[str]:
    """jobs/drift.py: the new rows of `config.data` against the training rows of `config.run`'s
    model; the table and every feature's figures logged to a run of `config.drift_experiment`."""
    import os
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    from caspar.artifacts import FEATURE_PROFILE_FILE
    from caspar.data.features import feature_names, schema
    from caspar.data.prepared import load_prepared
    from caspar.errors import UserError
    from caspar.training.registry import find_model

    source = find_model(config.run, config.experiment_name)
    client = MlflowClient()
    run = client.get_run(source.run_id)
    if run.data.tags.get("schema_version", schema()["version"]) != schema()["version"]:
        raise UserError(f"run {source.run_id} was trained on feature set {run.data.tags['schema_version']}, "
                        f"this code computes {schema()['version']}")
    if not any(a.path == FEATURE_PROFILE_FILE for a in client.list_artifacts(source.run_id)):
        raise UserError(f"run {source.run_id} ({run.info.run_name}) has no {FEATURE_PROFILE_FILE}: it was trained "
                        "before drift checks existed; train it again to check new logs against it")
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(source.run_id, FEATURE_PROFILE_FILE, folder)
        with open(path) as handle:
            profile = FeatureProfile.from_json(handle.read())
    prepared = load_prepared(config.data, every_split=False)
    features = np.concatenate([x for x, _ in prepared.splits.values()])
    if not len(features):
        raise UserError(f"--data {config.data}: no rows")
    found = shifts(profile, features, feature_names())
    flagged = [s for s in found if s.flagged]
    headline = (f"{len(features)} rows of {config.data} against the {profile.rows} training rows of run "
                f"{run.info.run_name} ({source.run_id}): {len(flagged)} of {len(found)} features flagged "
                f"(more than {OUTSIDE_FLAG:.0%} of rows outside the training range, or PSI above {PSI_FLAG})")
    mlflow.set_experiment(config.drift_experiment)
    with tracking.run(run_name=f"drift-{source.name}") as drift_run:
        mlflow.log_params({"model_run_id": source.run_id, "model": config.run, "data": config.data})
        mlflow.log_metrics({"drift_rows": len(features), "drift_flagged_features": len(flagged),
                            "drift_max_psi": max(s.psi for s in found),
                            "drift_max_outside": max(s.outside for s in found)})
        mlflow.set_tag("mlflow.note.content", headline)
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "drift.md"), "w") as handle:
                handle.write(headline + "\n\n" + table(found, limit=len(found)))
            with open(os.path.join(folder, "drift.json"), "w") as handle:
                json.dump([s.__dict__ for s in found], handle, indent=1)
            mlflow.log_artifacts(folder)
    return [headline, *(table(found).splitlines() if flagged else []),
            f"every feature's figures: drift.md of run {drift_run.info.run_id} (experiment {config.drift_experiment})"]
