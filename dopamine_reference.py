"""The authors' own DQN (Dopamine's ReDo lab) on the settings of our CPU-scale runs, logging what ours logs.

When our baseline's dormant curve disagrees with the paper's, the first question is whether our code deviates from
the authors'. This script answers it at our scale: it runs Dopamine's ``RecycledDQNAgent`` (the agent, network,
replay, exploration and Atari preprocessing of ``dopamine/labs/redo`` and ``dopamine/jax``, unchanged) and scores
dormant neurons with the lab's own ``BaseRecycler.log_dead_neurons_count``, at tau = 0, 0.025 and 0.1 every
1,000 agent steps. It writes TensorBoard files with ``dqn_redo.py``'s tags, so ``plot.py`` draws both:

    python3 -m venv .venv-dopamine && . .venv-dopamine/bin/activate
    pip install -r requirements-dopamine.txt && pip install --no-deps dopamine-rl==4.1.2
    python dopamine_reference.py --game DemonAttack --replay-ratio 1 --total-timesteps 100000 --seed 1
    deactivate; python plot.py runs/DemonAttack-v4__baseline_rr1__1__* runs/dopamine_DemonAttack__rr1__1

It needs a separate environment (JAX, Flax, TensorFlow): nothing else in this project imports it. What it changes
in Dopamine, and why, is marked ADAPTED below: import stubs for modules the DQN path never calls, the lab's
statistics sampler (written for the replay buffer Dopamine had in 2023, absent from 4.1.2), and the settings of
``configs/dqn.gin`` and ``labs/redo/configs/dqn_dense.gin`` (not shipped in the wheel) written out as gin bindings.
"""

import argparse
import os
import sys
import time
import types

import numpy as np

LAYERS = {"Conv_0": "conv1", "Conv_1": "conv2", "Conv_2": "conv3", "Dense_0": "fc1"}  # Flax's names -> ours
TAUS = (0.0, 0.025, 0.1)


def stub_unused_imports() -> None:
    """ADAPTED: Dopamine 4.1.2 imports OpenAI baselines and legacy gym (only for its legacy-gym and PPO paths),
    its continuous-control networks and TensorFlow Probability's JAX substrate (broken on current JAX). The DQN
    path calls none of them, so placeholder modules stand in for them."""

    class Anything(types.ModuleType):
        def __getattr__(self, name):
            return Anything(name)

        def __call__(self, *args, **kwargs):
            return Anything("call")

    for name in ("baselines", "baselines.common", "baselines.common.atari_wrappers", "gym",
                 "tensorflow_probability", "tensorflow_probability.substrates",
                 "tensorflow_probability.substrates.jax", "dopamine.jax.continuous_networks"):
        sys.modules[name] = Anything(name)


def gin_bindings(game: str, update_period: int, seed: int) -> list[str]:
    """Dopamine's ``jax/agents/dqn/configs/dqn.gin`` and ``labs/redo/configs/dqn_dense.gin``, as bindings."""
    return [
        # dqn.gin
        "JaxDQNAgent.gamma = 0.99", "JaxDQNAgent.update_horizon = 1", "JaxDQNAgent.min_replay_history = 20000",
        "JaxDQNAgent.target_update_period = 8000", "JaxDQNAgent.epsilon_train = 0.01",
        "JaxDQNAgent.epsilon_eval = 0.001", "JaxDQNAgent.epsilon_decay_period = 250000",
        "JaxDQNAgent.optimizer = 'adam'", "create_optimizer.learning_rate = 6.25e-5", "create_optimizer.eps = 1.5e-4",
        "ReplayBuffer.max_capacity = 1000000", "ReplayBuffer.batch_size = 32",
        # dqn_dense.gin
        "RecycledDQNAgent.network = 'nature'", "RecycledDQNAgent.num_updates_per_train_step = 1",
        "JaxDQNAgent.collector_allowlist = []",
        # this run: the game, the replay ratio (one update every `update_period` agent steps), the seed
        f"JaxDQNAgent.update_period = {update_period}", f"JaxDQNAgent.seed = {seed}",
        "BaseRecycler.logging_period = 1000",
    ]


def event_writer(log_dir: str, hyperparameters: dict):
    """TensorBoard scalars and the hyperparameter table in the format ``plot.py`` reads (that of
    torch's ``SummaryWriter``), written with the tensorboard package TensorFlow brings."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(log_dir)
    table = "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hyperparameters.items())
    text = TensorProto(dtype="DT_STRING", string_val=[table.encode()],
                       tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    writer.add_event(Event(wall_time=time.time(), step=0, summary=Summary(
        value=[Summary.Value(tag="hyperparameters/text_summary", metadata=metadata, tensor=text)])))

    def scalar(tag: str, value: float, step: int) -> None:
        writer.add_event(Event(wall_time=time.time(), step=step,
                               summary=Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])))

    return writer, scalar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", default="DemonAttack", help="ALE game name (Dopamine makes ALE/<game>-v5)")
    parser.add_argument("--replay-ratio", type=float, default=1.0, help="gradient updates per agent step: 1, 0.5, 0.25")
    parser.add_argument("--total-timesteps", type=int, default=100_000, help="agent steps")
    parser.add_argument("--seed", type=int, default=1, help="the agent's seed (network, exploration, replay)")
    parser.add_argument("--out-dir", default="runs", help="the run folder goes under it")
    args = parser.parse_args()
    if args.replay_ratio <= 0 or args.replay_ratio > 1 or (1 / args.replay_ratio) % 1:
        parser.error("--replay-ratio must be 1/k for a whole k (Dopamine updates once every k agent steps)")
    if args.total_timesteps < 1:
        parser.error("--total-timesteps must be positive")
    update_period = round(1 / args.replay_ratio)
    run_dir = os.path.join(args.out_dir, f"dopamine_{args.game}__rr{args.replay_ratio:g}__{args.seed}")
    if os.path.exists(run_dir):
        parser.error(f"{run_dir} exists: move it away or pick another --seed/--out-dir")

    stub_unused_imports()
    import gin
    import jax
    from dopamine.discrete_domains import atari_lib
    from dopamine.labs.redo import recycled_dqn_agents

    gin.parse_config(gin_bindings(args.game, update_period, args.seed))
    env = atari_lib.create_atari_environment(game_name=args.game, sticky_actions=True)
    agent = recycled_dqn_agents.RecycledDQNAgent(num_actions=env.action_space.n)
    recycler = agent.weight_recycler  # reset_mode None: the baseline, which only logs

    def sample_scoring_states():
        # ADAPTED: the lab calls the 2023 buffer's sample_transition_batch; this is the same uniform draw of
        # batch_size_statistics (256) states from Dopamine 4.1.2's buffer.
        return agent.preprocess_fn(agent._replay.sample(size=agent.batch_size_statistics).state)

    agent._sample_batch_for_statistics = sample_scoring_states

    writer, scalar = event_writer(run_dir, {
        "env_id": f"{args.game}-v4", "replay_ratio": args.replay_ratio, "enable_redo": False, "redo_tau": 0.1,
        "seed": args.seed, "code": "Dopamine", "dopamine_settings": "; ".join(gin_bindings(args.game, update_period,
                                                                                           args.seed))})
    log_dead_neurons = recycler.maybe_log_deadneurons

    def log_every_tau(update_step, intermediates):
        # The lab logs one threshold; score the same intermediates at each of ours with its own function.
        if intermediates is not None:
            step = steps  # the agent steps so far (the main loop's counter)
            for tau in TAUS:
                recycler.dead_neurons_threshold = tau
                logged = recycler.log_dead_neurons_count(intermediates)
                scalar(f"dormant/tau={tau:g}/total", logged["dead_feature_percentage"] / 100, step)
                for key, value in logged.items():
                    if key.startswith("dead_feature_percentage/"):
                        layer = LAYERS[key.split("/")[-1].removesuffix("_act")]
                        scalar(f"dormant/tau={tau:g}/{layer}", value / 100, step)
            print(f"step {step:,} | dormant(tau=0.1) {logged['dead_feature_percentage']:.1f}%", flush=True)
        return log_dead_neurons(update_step, intermediates)

    recycler.maybe_log_deadneurons = log_every_tau
    agent._log_stats = lambda log_dict, step: None  # no collector is set up; the scalars above are the log

    print(f"Dopamine {args.game}: RecycledDQNAgent, update_period {update_period}, seed {args.seed}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}", flush=True)
    # Dopamine's Runner._run_one_episode, with the step count made global and the return logged.
    steps, max_episode_steps = 0, 27_000
    while steps < args.total_timesteps:
        action = agent.begin_episode(env.reset())
        episode_return, episode_steps = 0.0, 0
        while True:
            observation, reward, terminal, _ = env.step(action)
            episode_return += reward
            episode_steps += 1
            steps += 1
            reward = np.clip(reward, -1, 1)
            if env.game_over or episode_steps == max_episode_steps or steps >= args.total_timesteps:
                break
            action = agent.step(reward, observation)
        agent.end_episode(reward, terminal)
        if env.game_over or episode_steps == max_episode_steps:
            scalar("charts/episodic_return", episode_return, steps)
            print(f"step {steps:,} | return {episode_return:g}", flush=True)
    writer.close()


if __name__ == "__main__":
    main()
