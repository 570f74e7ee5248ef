"""The study's model: one ensemble chosen from every finished trial.

The candidates are the study's default recipes (cross-fitted before the search), every tree trial
that fitted all its folds, and the best network trial. Which rows choose which weight, so that no
member's weight is chosen on rows it was fitted on:
- the tree recipes' weights: ensemble selection (Caruana et al. 2004) on their out-of-fold
  predictions of every --fit-on row (each row predicted by fits that never saw its game);
- the network's share: ensemble selection between those trees and the network on the validation
  games alone (the network never trained on them; its epoch was chosen on them, so its share
  ships only when its gain over the trees is beyond the noise of those games, game by game).
A network correcting the study's trees with share w makes (1 - w) x trees + w x (study's trees +
correction): one TreeEnsemble layer with merged weights, plus the correction scaled by w.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from caspar.model.trees import Recipe, ensemble_weights
from caspar.training import evaluate
from caspar.training.fit import History


@dataclass
class Member:
    """A tree recipe of the study: a default one, or a tree trial's."""
    recipe: Recipe  # its label names it in figures and metrics
    out_of_fold: np.ndarray  # [tree rows]
    trial_id: str | None = None  # None: one of the study's default recipes
    config: dict = field(default_factory=dict)  # the trial's configuration
    base_weight: float = 0.0  # its weight in the study's trees, which every network corrects
    model: object = None  # fitted on every --fit-on row, once it has a weight

    @property
    def name(self) -> str:
        """Its name in figures and metrics (its recipe's)."""
        return self.recipe.name


@dataclass
class NetworkCandidate:
    """The best network trial: its configuration and checkpoint, and its validation predictions."""
    trial_id: str
    config: dict
    checkpoint: object
    val_prediction: np.ndarray  # [validation rows]
    best_val_loss: float
    history: History  # its epochs' losses up to its checkpoint (caspar.tuning.study.best_history)


@dataclass
class Ensemble:
    """What a study ships: its tree recipes weighted by ensemble selection on their out-of-fold
    predictions, and a share of the best network trial where it beats the trees beyond the noise
    of the validation games."""
    members: list[Member]
    tree_weights: np.ndarray  # [members], sum 1: the tree recipes' ensemble
    network: NetworkCandidate | None = None
    network_share: float = 0.0  # w: what ships is (1 - w) x the trees + w x the network
    network_gain: dict | None = None  # the mix against the trees alone on the validation games
    val_loss: float | None = None  # what ships, on the validation rows (out of fold where they are tree rows)

    @property
    def weights(self) -> np.ndarray:
        """Each member's weight in the TreeEnsemble layer that ships, [members], sum 1."""
        base = np.array([m.base_weight for m in self.members])
        return (1 - self.network_share) * self.tree_weights + self.network_share * base

    def history(self) -> History:
        """What a train run's history holds of the model that ships: the network's epochs if it
        ships (best_epoch its chosen epoch), else best_epoch 0 (the trees alone)."""
        ships = self.network is not None and self.network_share > 0
        history = self.network.history if ships else History({"loss": [], "val_loss": []}, 0)
        return dataclasses.replace(
            history, network_gain=self.network_gain or None,
            network_best_epoch=self.network.history.best_epoch if self.network is not None else None,
            best_val_loss=self.val_loss if self.val_loss is not None else history.best_val_loss)

    def shipped(self) -> list[tuple[Member, float]]:
        """Returns (member, weight) of each member with a weight."""
        return [(m, float(w)) for m, w in zip(self.members, self.weights) if w > 0]

    def description(self) -> dict:
        """Returns what ships, as logged with the best run (ensemble.json)."""
        network = None
        if self.network is not None and self.network_share > 0:
            network = {"trial_id": self.network.trial_id, "share": self.network_share,
                       "config": {k: v for k, v in self.network.config.items() if not k.startswith("tree")}}
        return {"trees": [{"name": m.name, "weight": w, "trial_id": m.trial_id,
                           "recipe": dataclasses.asdict(m.recipe)} for m, w in self.shipped()],
                "network": network, "network_gain": self.network_gain,
                "candidates": {"tree_recipes": len(self.members), "network": self.network is not None}}

    def lines(self) -> list[str]:
        """Returns what ships, in words: the recipes and their weights, the network if one ships."""
        def recipe(m: Member, w: float) -> str:
            r = m.recipe
            what = "default" if m.trial_id is None else f"trial {m.trial_id}"
            rows = f", rows {r.row_fraction:.2f}" if r.learner == "lightgbm" else ""
            return (f"  {w:.2f} {r.learner} ({what}): {r.iterations} trees, learning rate {r.learning_rate:.3g}, "
                    f"{r.leaves} leaves of at least {r.min_leaf} rows, L2 {r.l2:g}, features {r.feature_fraction:.2f}{rows}")
        shipped = self.shipped()
        lines = [f"the model: {len(shipped)} tree recipe{'s' * (len(shipped) != 1)} of the {len(self.members)} "
                 "cross-fitted, weighted:", *(recipe(m, w) for m, w in shipped)]
        gain = self.network_gain
        if self.network is None:
            lines.append("  no network: no network trial saved a model")
        elif self.network_share > 0:
            lines.append(f"  and {self.network_share:.2f} of network trial {self.network.trial_id} correcting the "
                         f"study's trees: it lowers the trees' squared error by {gain['mean']:+.5f} ± "
                         f"{gain['standard_error']:.5f} per validation game")
        else:
            why = (f"gains {gain['mean']:+.5f} ± {gain['standard_error']:.5f} per validation game, within noise"
                   if gain else "no share of it lowered the trees' error on the validation games")
            lines.append(f"  no network: the best network trial ({self.network.trial_id}) {why}")
        return lines


def members_of(stage, results, folds: int) -> list[Member]:
    """The candidates of the study's ensemble.

    Args:
        stage: the study's Stage (its default recipes, cross-fitted).
        results: Ray Tune's ResultGrid of the search.
        folds: the game folds a recipe trial fits.

    Returns:
        The default recipes, then every tree trial that finished all `folds` folds (its last
        checkpoint's out-of-fold predictions, [tree rows]) and its fit on every row, in the trials'
        order (a trial the time budget cut off before that is left out: fitting it here would hold
        up the study).
    """
    from caspar.tuning.trial import OUT_OF_FOLD_FILE, recipe_of, saved_model

    crossed = stage.crossed
    members = [Member(r, crossed.out_of_fold[:, i], base_weight=float(w), model=m)
               for i, (r, w, m) in enumerate(zip(crossed.recipes, crossed.weights, crossed.models))]
    for result in sorted(results, key=lambda r: r.path):
        config, metrics = result.config or {}, result.metrics or {}
        if config.get("kind") != "trees" or metrics.get("fold") != folds or result.checkpoint is None:
            continue
        trial_id = metrics.get("trial_id") or os.path.basename(result.path.rstrip("/"))
        with result.checkpoint.as_directory() as folder:
            out_of_fold, model = np.load(os.path.join(folder, OUT_OF_FOLD_FILE)), saved_model(folder)
        if np.isnan(out_of_fold).any() or model is None:  # cut off before its fit on every row: unfinished
            continue
        members.append(Member(recipe_of(config, f"{config['tree_learners']}-{trial_id}"), out_of_fold, trial_id, config,
                              model=model))  # fitted on every row by the trial
    return members


def choose(members: list[Member], y: np.ndarray) -> np.ndarray:
    """The tree recipes' weights: ensemble selection on their out-of-fold predictions.

    Args:
        members: the candidates.
        y: [tree rows] rewards.

    Returns:
        [members] weights, sum 1.
    """
    return ensemble_weights(np.stack([m.out_of_fold for m in members], axis=1), y)


def network_share(trees_val: np.ndarray, network: NetworkCandidate, y_val: np.ndarray,
                  val_games: np.ndarray) -> tuple[float, dict]:
    """Ensemble selection between the trees and the network on the validation rows.

    Args:
        trees_val: [validation rows] the trees' predictions (out of fold where they were fitted on them).
        network: the best network trial.
        y_val: [validation rows] rewards.
        val_games: [validation rows] the game of each row.

    Returns:
        (share, gain): the network's share, 0 unless the mix lowers the trees' squared error beyond
        the validation games' noise; and that gain, game by game (evaluate.gain_by_game).
    """
    share = float(ensemble_weights(np.stack([trees_val, network.val_prediction], axis=1), y_val)[1])
    mix = (1 - share) * trees_val + share * network.val_prediction
    gain = evaluate.gain_by_game(y_val, trees_val, mix, val_games)
    return (share if share > 0 and gain["beyond_noise"] else 0.0), gain
