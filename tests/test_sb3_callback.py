"""examples/sb3_redo.py end to end: small CPU runs of SB3's DQN and SAC with the ReDo callback."""

import math

import pytest
import torch
from torch import nn
from stable_baselines3 import DQN, PPO, SAC
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.logger import configure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from redo import dormant_fractions, dormant_scores
from sb3_redo import ReDoCallback


def logged_tags(folder) -> set[str]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return set(events.Tags()["scalars"])


def parameters_and_moments(network, optimizer) -> list[torch.Tensor]:
    found = [p.detach().clone() for p in network.parameters()]
    for state in optimizer.state.values():
        found += [v.clone() for v in state.values() if torch.is_tensor(v)]
    return found


def test_dqn_on_cartpole(tmp_path):
    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=100, train_freq=1, gradient_steps=1, buffer_size=1000,
                policy_kwargs={"net_arch": [64, 64]}, device="cpu", seed=0)
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    callback = ReDoCallback(interval=100, tau=0.5, batch_size=64)
    model.learn(600, callback=callback, log_interval=1)
    assert [entry["gradient_steps"] for entry in callback.history] == [100, 200, 300, 400, 500]
    assert sum(sum(entry["recycled"]["q_net"].values()) for entry in callback.history) > 0
    assert set(callback.history[0]["recycled"]["q_net"]) == {"q_net.0", "q_net.2"}  # the output layer is never
    assert all(torch.isfinite(p).all() for p in model.q_net.parameters())
    tags = logged_tags(tmp_path)
    assert {"dormant/q_net/tau=0.5/total", "dormant/q_net/tau=0.1/q_net.2", "dormant/q_net/tau=0/total",
            "redo/recycled/q_net/total", "redo/recycled/q_net/q_net.0"} <= tags


def test_sac_on_pendulum_recycles_actor_and_critic_with_their_own_optimizers(tmp_path):
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=100, buffer_size=1000,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu", seed=0)
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    callback = ReDoCallback(interval=50, tau=0.5, batch_size=64)
    model.learn(300, callback=callback, log_interval=1)
    assert len(callback.history) == 4
    last = callback.history[-1]
    assert set(last["recycled"]) == {"actor", "critic"}
    assert set(last["recycled"]["critic"]) == {"qf0.0", "qf0.2", "qf1.0", "qf1.2"}
    assert set(last["recycled"]["actor"]) == {"latent_pi.0", "latent_pi.2"}
    recycled = sum(sum(e["recycled"][net].values()) for e in callback.history for net in ("actor", "critic"))
    assert recycled > 0
    # The critic's target is left to SB3's soft updates: it is not the critic.
    assert not any(p is q for p in model.critic.parameters() for q in model.critic_target.parameters())
    assert all(math.isfinite(v) for v in (p.sum().item() for p in model.actor.parameters()))
    tags = logged_tags(tmp_path)
    assert {"dormant/actor/tau=0.1/total", "dormant/critic/tau=0.5/qf1.2", "redo/recycled/critic/total"} <= tags


def test_the_policys_own_activation_is_the_one_scored():
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=100, buffer_size=1000,
                policy_kwargs={"net_arch": [32, 32], "activation_fn": nn.Tanh}, device="cpu", seed=0)
    callback = ReDoCallback(interval=50, tau=0.1, batch_size=64, recycle=False)
    model.learn(200, callback=callback)  # once: "'latent_pi.0' goes through tanh", with no way to pass it
    batch = model.replay_buffer.sample(64)
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    callback._check()
    for name, network, x in [("actor", model.actor, batch.observations),
                             ("critic", model.critic, (batch.observations, batch.actions))]:
        expected = dormant_fractions(dormant_scores(network, x, activation=torch.tanh), 0.1)
        assert callback.history[-1]["fractions"][name][0.1] == pytest.approx(expected)


def test_logging_only_changes_nothing():
    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=50, train_freq=1, gradient_steps=1, buffer_size=500,
                learning_rate=0.0, device="cpu", seed=0)  # no learning: the weights can only change through ReDo
    before = parameters_and_moments(model.q_net, model.policy.optimizer)
    callback = ReDoCallback(interval=20, tau=1.0, recycle=False)
    model.learn(200, callback=callback)
    assert len(callback.history) >= 5 and not any(entry["recycled"] for entry in callback.history)
    assert all(torch.equal(a, b) for a, b in zip(before, [p.detach() for p in model.q_net.parameters()]))


def test_unsupported_algorithm_and_bad_arguments_fail_at_once():
    with pytest.raises(ValueError, match="DQN, SAC and TD3, not PPO"):
        PPO("MlpPolicy", "CartPole-v1", n_steps=64, device="cpu").learn(64, callback=ReDoCallback())
    with pytest.raises(ValueError, match="tau >= 0"):
        ReDoCallback(tau=-1)


class RawWeightExtractor(BaseFeaturesExtractor):
    """A features extractor written as ``relu(obs @ W)`` on a raw parameter: a layer ReDo cannot handle."""

    def __init__(self, observation_space, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        self.weight = torch.nn.Parameter(torch.randn(observation_space.shape[0], features_dim) / 2)

    def forward(self, observations):
        return torch.relu(observations @ self.weight)


def test_a_custom_extractor_redo_cannot_handle_is_refused_until_skipped(tmp_path):
    def sac():
        return SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, buffer_size=500, device="cpu", seed=0,
                   policy_kwargs={"net_arch": [16, 16], "features_extractor_class": RawWeightExtractor})

    with pytest.raises(ValueError, match=r"'features_extractor' \(RawWeightExtractor\) computes matmul"):
        sac().learn(120, callback=ReDoCallback(interval=50, tau=0.5, batch_size=32))
    with pytest.raises(ValueError, match=r"skip names \['policy'\]; this model's networks are \['actor', 'critic'\]"):
        sac().learn(60, callback=ReDoCallback(skip={"policy": ["features_extractor"]}))
    skip = {"actor": ["features_extractor"], "critic": ["features_extractor"]}
    callback = ReDoCallback(interval=50, tau=0.5, batch_size=32, skip=skip)
    sac().learn(120, callback=callback)
    assert set(callback.history[-1]["recycled"]["actor"]) == {"latent_pi.0", "latent_pi.2"}
    assert set(callback.history[-1]["recycled"]["critic"]) == {"qf0.0", "qf0.2", "qf1.0", "qf1.2"}
