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
# Sampling noise: a few new games differ from the training rows by chance (rows of one game are
# alike), so a feature is flagged only when its PSI is also above what NOISE_DRAWS draws of that many
# of the training games give it at the NOISE_QUANTILE. Tabulated for these numbers of games.
NOISE_GAMES = (1, 2, 3, 5, 10, 20, 50)
NOISE_DRAWS = 200
NOISE_QUANTILE = 0.99


@dataclass
class FeatureProfile:
    """The training rows' distribution of every feature, as the drift check compares new rows with
    it (written with the model as feature_profile.json)."""
    minimum: np.ndarray  # [F]
    maximum: np.ndarray  # [F]
    shares: np.ndarray  # [F, BINS + 2]: below the range, BINS bins of it, above (0 for the fitted rows)
    rows: int
    noise: dict = None  # {games: [F]}: the PSI that many training games reach by chance (NOISE_QUANTILE)

    @classmethod
    def fit(cls, features: np.ndarray, games: np.ndarray | None = None, seed: int = 0) -> FeatureProfile:
        """The profile of the training rows.

        Args:
            features: [N, F] raw rows (the rows the model's normalisation was fitted on).
            games: [N] the game of each row, for the sampling noise of a few games' rows (none without).
            seed: the seed of the noise's draws.

        Returns:
            The FeatureProfile.
        """
        minimum, maximum = features.min(axis=0), features.max(axis=0)
        profile = cls(minimum.astype(np.float64), maximum.astype(np.float64), np.zeros((features.shape[1], BINS + 2)),
                      len(features), {})
        profile.shares = profile.bin_shares(features)
        if games is not None:
            profile.noise = profile.sampling_noise(features, games, seed)
        return profile

    def sampling_noise(self, features: np.ndarray, games: np.ndarray, seed: int) -> dict:
        """The PSI each feature reaches by chance in a few games' rows.

        Args:
            features: [N, F] the training rows.
            games: [N] the game of each row.
            seed: the seed of the draws.

        Returns:
            {n: [F]} for n in NOISE_GAMES below the number of games: the NOISE_QUANTILE of the PSI
            of n training games drawn at random (without replacement) against all the training rows.
        """
        names, game_of_row = np.unique(games, return_inverse=True)
        counts = np.stack([self.bin_shares(features[game_of_row == g]) * np.sum(game_of_row == g)
                           for g in range(len(names))])  # [games, F, BINS + 2]: rows per bin
        rows = counts[:, 0, :].sum(axis=1)  # [games]
        rng = np.random.default_rng(seed)
        noise = {}
        for n in (n for n in NOISE_GAMES if n < len(names)):
            draws = [rng.choice(len(names), n, replace=False) for _ in range(NOISE_DRAWS)]
            psi = np.stack([psi_of(counts[d].sum(axis=0) / rows[d].sum(), self.shares) for d in draws])  # [draws, F]
            noise[n] = np.quantile(psi, NOISE_QUANTILE, axis=0)
        return noise

    def noise_for(self, games: int) -> np.ndarray | None:
        """The chance PSI of a number of new games.

        Args:
            games: how many games the new rows come from.

        Returns:
            [F]: that of the largest tabulated count not above it (fewer games, more noise), or None
            without a table.
        """
        counts = [n for n in sorted(self.noise or {}) if n <= games]
        return self.noise[counts[-1]] if counts else (self.noise[min(self.noise)] if self.noise else None)

    def bin_shares(self, features: np.ndarray) -> np.ndarray:
        """Where rows fall against the profile's range.

        Args:
            features: [N, F] raw rows.

        Returns:
            [F, BINS + 2]: the share of rows below the range, in each bin, and above (NaN: above).
        """
        x = features.astype(np.float64)
        span = np.where(self.maximum > self.minimum, self.maximum - self.minimum, 1.0)
        inner = np.clip(np.floor((x - self.minimum) / span * BINS), 0, BINS - 1).astype(np.int64) + 1
        index = np.where(x < self.minimum, 0, np.where(x > self.maximum, BINS + 1, inner))
        index = np.where(np.isnan(x), BINS + 1, index)  # NaN: outside, like any value never seen
        counts = np.zeros((x.shape[1], BINS + 2))
        np.add.at(counts, (np.broadcast_to(np.arange(x.shape[1]), x.shape), index), 1)
        return counts / max(len(x), 1)

    def to_json(self) -> str:
        """Returns the profile as feature_profile.json's text."""
        return json.dumps({"bins": BINS, "rows": self.rows, "minimum": self.minimum.tolist(),
                           "maximum": self.maximum.tolist(), "shares": np.round(self.shares, 6).tolist(),
                           "noise": {str(n): np.round(v, 6).tolist() for n, v in (self.noise or {}).items()}})

    @classmethod
    def from_json(cls, text: str) -> FeatureProfile:
        """A profile from feature_profile.json's text.

        Args:
            text: the JSON.

        Returns:
            The FeatureProfile.

        Raises:
            ValueError: a profile of another number of bins.
        """
        data = json.loads(text)
        if data.get("bins") != BINS:
            raise ValueError(f"a feature profile of {data.get('bins')} bins; this version reads {BINS}")
        noise = {int(n): np.array(v) for n, v in data.get("noise", {}).items()}
        return cls(np.array(data["minimum"]), np.array(data["maximum"]), np.array(data["shares"]), int(data["rows"]), noise)


def psi_of(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The population stability index of each feature.

    Args:
        new: [F, bins] the new rows' bin shares.
        old: [F, bins] the training rows'.

    Returns:
        [F] the PSI (empty bins count as SHARE_FLOOR).
    """
    new, old = np.maximum(new, SHARE_FLOOR), np.maximum(old, SHARE_FLOOR)
    return ((new - old) * np.log(new / old)).sum(axis=1)


@dataclass
class Shift:
    """How far one feature of the new rows moved from the training rows."""
    feature: str
    outside: float  # share of the new rows outside the training range
    psi: float  # population stability index against the training rows
    constant_in_training: bool
    noise: float = 0.0  # the PSI as many training games reach by chance (NOISE_QUANTILE)

    @property
    def flagged(self) -> bool:
        """Whether it is reported: rows outside the training range, or a PSI above both the usual
        threshold and chance."""
        return self.outside > OUTSIDE_FLAG or self.psi > max(PSI_FLAG, self.noise)


def shifts(profile: FeatureProfile, features: np.ndarray, names: list[str], games: int | None = None) -> list[Shift]:
    """How every feature of the new rows moved.

    Args:
        profile: the training rows' FeatureProfile.
        features: [N, F] the new rows, raw.
        names: [F] the features' names.
        games: how many games the new rows come from (None: no sampling noise considered).

    Returns:
        One Shift per feature, largest PSI first.

    Raises:
        ValueError: the new rows have another number of features.
    """
    if features.shape[1] != len(profile.minimum):
        raise ValueError(f"the new rows have {features.shape[1]} features, the model {len(profile.minimum)}")
    shares = profile.bin_shares(features)
    psi = psi_of(shares, profile.shares)
    outside = shares[:, [0, BINS + 1]].sum(axis=1)
    constant = profile.maximum <= profile.minimum
    noise = profile.noise_for(games) if games else None
    noise = np.zeros(len(psi)) if noise is None else noise
    result = [Shift(name, float(o), float(p), bool(c), float(n))
              for name, o, p, c, n in zip(names, outside, psi, constant, noise)]
    return sorted(result, key=lambda s: -s.psi)


def table(found: list[Shift], limit: int = 25) -> str:
    """The flagged features as a Markdown table.

    Args:
        found: shifts()'s result.
        limit: the largest shifts listed at most.

    Returns:
        The table's text.
    """
    flagged = [s for s in found if s.flagged]
    lines = ["| feature | outside the training range | PSI | PSI by chance (as many games) | constant in training |",
             "|---|---|---|---|---|"]
    lines += [f"| `{s.feature}` | {s.outside:.1%} | {s.psi:.3f} | {s.noise:.3f} | {'yes' if s.constant_in_training else ''} |"
              for s in flagged[:limit]]
    if len(flagged) > limit:
        lines.append(f"| … {len(flagged) - limit} more | | | | |")
    return "\n".join(lines) + "\n"


def check(config) -> list[str]:
    """jobs/drift.py: the new rows of `config.data` against the training rows of `config.run`'s
    model; the table and every feature's figures logged to a run of `config.drift_experiment`.

    Args:
        config: the drift job's options (DriftConfig).

    Returns:
        The lines the job prints.

    Raises:
        UserError: no such model, one of another feature set or without a feature profile, or no new rows.
    """
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
    games = len(np.unique(np.concatenate(list(prepared.files.values()))))
    found = shifts(profile, features, feature_names(), games)
    flagged = [s for s in found if s.flagged]
    headline = (f"{len(features)} rows ({games} games) of {config.data} against the {profile.rows} training rows of run "
                f"{run.info.run_name} ({source.run_id}): {len(flagged)} of {len(found)} features flagged "
                f"(more than {OUTSIDE_FLAG:.0%} of rows outside the training range, or a PSI above {PSI_FLAG} and above "
                f"what {games} training games reach by chance, {NOISE_QUANTILE:.0%} of the time)")
    noise = profile.noise_for(games)
    if noise is not None and np.median(noise) > PSI_FLAG:
        enough = next((n for n in sorted(profile.noise) if np.median(profile.noise[n]) <= PSI_FLAG), None)
        headline += (f"; with {games} games, half the features move by PSI {np.median(noise):.2f} by chance: "
                     + (f"{enough} games or more make a sharper check" if enough else "more games make a sharper check"))
    mlflow.set_experiment(config.drift_experiment)
    with tracking.run(run_name=f"drift-{source.name}") as drift_run:
        mlflow.log_params({"model_run_id": source.run_id, "model": config.run, "data": config.data})
        mlflow.log_metrics({"drift_rows": len(features), "drift_flagged_features": len(flagged),
                            "drift_max_psi": max(s.psi for s in found),
                            "drift_max_outside": max(s.outside for s in found), "drift_games": games})
        mlflow.set_tag("mlflow.note.content", headline)
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "drift.md"), "w") as handle:
                handle.write(headline + "\n\n" + table(found, limit=len(found)))
            with open(os.path.join(folder, "drift.json"), "w") as handle:
                json.dump([s.__dict__ for s in found], handle, indent=1)
            mlflow.log_artifacts(folder)
    return [headline, *(table(found).splitlines() if flagged else []),
            f"every feature's figures: drift.md of run {drift_run.info.run_id} (experiment {config.drift_experiment})"]
