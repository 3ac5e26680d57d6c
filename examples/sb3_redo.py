"""ReDo for Stable-Baselines3's off-policy algorithms (DQN, SAC, TD3) in one callback.

    from stable_baselines3 import SAC
    from sb3_redo import ReDoCallback

    model = SAC("MlpPolicy", "Pendulum-v1", tensorboard_log="runs")
    model.learn(100_000, callback=ReDoCallback(interval=1000, tau=0.1))

Every ``interval`` gradient steps it samples ``batch_size`` states (and their actions, for a critic)
uniformly from the model's replay buffer, logs the dormant fractions of each network through SB3's
logger (``dormant/<net>/tau=<tau>/<layer>`` and ``.../total``) and, with ``recycle=True``, recycles the
tau-dormant neurons of each network with that network's own optimizer
(``redo/recycled/<net>/<layer>``). DQN: ``q_net`` with ``policy.optimizer``. SAC and TD3: ``actor``
with ``actor.optimizer``, ``critic`` with ``critic.optimizer``. Target networks are left alone: they
receive the recycled weights through SB3's own soft or hard updates. Networks are re-drawn with
PyTorch's default initializer, the one SB3's off-policy networks are built with, and scored on the
policy's own ``activation_fn`` (``policy_kwargs={"activation_fn": nn.Tanh}`` scores tanh outputs; SB3's
``NatureCNN`` always applies ReLU, so with a ``CnnPolicy`` keep ReLU or skip the features extractor).

Copy this file next to ``redo.py``; it needs only stable-baselines3 and torch.
"""

from __future__ import annotations

import torch
from stable_baselines3.common.callbacks import BaseCallback

from redo import dormant_fractions, dormant_scores, recycle_dormant


class ReDoCallback(BaseCallback):
    """Scores, logs and (optionally) recycles dormant neurons every ``interval`` gradient steps.

    Args:
        interval: gradient steps between checks (the paper's F = 1000).
        tau: dormancy threshold for recycling (the paper: 0.1).
        batch_size: replay states scored at each check (the authors' code: 256).
        recycle: recycle the tau-dormant neurons; False only logs.
        log_taus: thresholds at which the dormant fractions are logged.
        skip: per network (``"q_net"``, ``"actor"``, ``"critic"``), hidden layers of a kind ReDo cannot
            score (e.g. in a custom features extractor) to leave out knowingly: ``redo.dormant_scores``' skip.
    """

    def __init__(self, interval: int = 1000, tau: float = 0.1, batch_size: int = 256, recycle: bool = True,
                 log_taus: tuple[float, ...] = (0.0, 0.025, 0.1), skip: dict[str, list[str]] | None = None,
                 verbose: int = 0):
        super().__init__(verbose)
        if interval <= 0 or tau < 0 or batch_size <= 0:
            raise ValueError(f"ReDoCallback needs interval > 0, tau >= 0, batch_size > 0; got {interval}, {tau}, "
                             f"{batch_size}")
        self.interval, self.tau, self.batch_size, self.recycle = interval, tau, batch_size, recycle
        self.log_taus = sorted({*log_taus, tau})
        self.skip = skip or {}
        self.checks_done = 0
        self.history: list[dict] = []  # one entry per check: {"gradient_steps", "fractions", "recycled"}

    def _networks(self):
        """(name, network, optimizer, which inputs it takes) for each network of the model."""
        model = self.model
        if hasattr(model, "q_net"):
            return [("q_net", model.q_net, model.policy.optimizer, "obs")]
        if hasattr(model, "actor") and hasattr(model, "critic"):
            return [("actor", model.actor, model.actor.optimizer, "obs"),
                    ("critic", model.critic, model.critic.optimizer, "obs_actions")]
        raise ValueError(f"ReDoCallback supports SB3's DQN, SAC and TD3, not {type(model).__name__}")

    def _init_callback(self) -> None:
        names = [name for name, *_ in self._networks()]  # fail at the start of learn(), not at the first check
        if set(self.skip) - set(names):
            raise ValueError(f"ReDoCallback's skip names {sorted(set(self.skip) - set(names))}; this model's "
                             f"networks are {names}")
        self.checks_done = self.model._n_updates // self.interval

    def _on_step(self) -> bool:
        return True

    # SB3's off-policy loop alternates collecting and training: a rollout starts right after the previous
    # training phase, so the check runs after that phase's gradient steps, as ReDo prescribes.
    def _on_rollout_start(self) -> None:
        self._check_if_due()

    def _on_training_end(self) -> None:
        self._check_if_due()

    def _check_if_due(self) -> None:
        due = self.model._n_updates // self.interval
        if due > self.checks_done and self.model.replay_buffer.size() > 0:
            self.checks_done = due
            self._check()

    def _check(self) -> None:
        batch = self.model.replay_buffer.sample(self.batch_size, env=self.model._vec_normalize_env)
        activation = self.model.policy.activation_fn()  # the module SB3's create_mlp puts after each hidden layer
        entry = {"gradient_steps": self.model._n_updates, "fractions": {}, "recycled": {}}
        for name, network, optimizer, inputs in self._networks():
            x = batch.observations if inputs == "obs" else (batch.observations, batch.actions)
            if self.recycle:
                result = recycle_dormant(network, optimizer, x, tau=self.tau, activation=activation,
                                         skip=self.skip.get(name, ()))
                scores = result["scores"]  # from before this recycling
                entry["recycled"][name] = result["recycled"]
                for layer, count in result["recycled"].items():
                    self.logger.record(f"redo/recycled/{name}/{layer}", count)
                self.logger.record(f"redo/recycled/{name}/total", sum(result["recycled"].values()))
            else:
                with torch.no_grad():
                    scores = dormant_scores(network, x, activation=activation, skip=self.skip.get(name, ()))
            entry["fractions"][name] = {}
            for tau in self.log_taus:
                fractions = dormant_fractions(scores, tau)
                entry["fractions"][name][tau] = fractions
                for layer, fraction in fractions.items():
                    self.logger.record(f"dormant/{name}/tau={tau:g}/{layer}", fraction)
        self.history.append(entry)
