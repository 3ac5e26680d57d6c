"""The authors' own DQN (Dopamine's ReDo lab) on the settings of our CPU-scale runs, logging what ours logs.

When our baseline's dormant curve disagrees with the paper's, the first question is whether our code deviates from
the authors'. This script answers it at our scale: it runs Dopamine's ``RecycledDQNAgent`` (the agent, network,
replay, exploration and Atari preprocessing of ``dopamine/labs/redo`` and ``dopamine/jax``, unchanged) and scores
dormant neurons with the lab's own ``BaseRecycler.log_dead_neurons_count``, at tau = 0, 0.025 and 0.1 every
1,000 agent steps. It writes TensorBoard files with ``dqn_redo.py``'s tags, so ``plot.py`` draws both:

    python3 -m venv .venv-dopamine && . .venv-dopamine/bin/activate
    pip install -r requirements-dopamine.txt && pip install --no-deps dopamine-rl==4.1.2
    python dopamine_reference.py --check
    python dopamine_reference.py --check-drq --check-updates 20
    python dopamine_reference.py --check-replay 3000 --game DemonAttack
    python dopamine_reference.py --check-env 40 --game DemonAttack
    python dopamine_reference.py --check-recycler runs/<a DrQ run>/checkpoint.pt --check-updates 1000
    python dopamine_reference.py --game DemonAttack --replay-ratio 1 --total-timesteps 100000 --seed 1
    python plot.py runs/DemonAttack-v4__baseline_rr1__1__* runs/dopamine_DemonAttack__rr1__1

``--check`` compares the parts one by one, on real frames: the authors' network with its parameters copied into
``dqn_redo.QNetwork``, their update rule (loss, gradients, optax Adam) against ours over a few hundred updates
from the same batches (beside a control: ours against ours from weights one part in 10^7 apart), their dormant
scores against ``redo.dormant_scores``, and their epsilon schedule. ``--check-drq`` does the same for DrQ(eps)
(``labs/atari_100k``): their dueling ``FullRainbowNetwork``, ``full_rainbow_agent.train`` (10-step double-DQN target,
Huber, Adam) against ``make_train_step``, the distribution of ``drq_image_augmentation``'s crops and intensities
against ``drq_augment``'s, and the epsilon schedule of ``DrQ_eps.gin``. ``--check-replay`` feeds the same stream to
Dopamine's 2023 n-step replay and ours, ``--check-env`` its Atari preprocessing and ours (see
:func:`check_replay_against_ours`, :func:`check_env_against_ours`). ``--check-recycler`` runs the lab's
``NeuronRecycler`` and ``redo.recycle_dormant`` on a DrQ(eps) run's own checkpoint and trains on from both (see
:func:`check_recycler_against_ours`). Beside another CPU-heavy process, run it
with ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`` (one thread).

It needs its own venv (ours plus JAX, Flax and TensorFlow): nothing else in this project imports it. What it
changes in Dopamine, and why, is marked ADAPTED below: import stubs for modules the DQN path never calls, the lab's
statistics sampler (written for the replay buffer Dopamine had in 2023, absent from 4.1.2), and the settings of
``configs/dqn.gin`` and ``labs/redo/configs/dqn_dense.gin`` (not shipped in the wheel) written out as gin bindings.
"""

import argparse
import collections
import importlib.util
import os
import sys
import time
import types

import numpy as np

LAYERS = {"Conv_0": "conv1", "Conv_1": "conv2", "Conv_2": "conv3", "Dense_0": "fc1"}  # Flax's names -> ours
DUELING_HEADS = {"Dense_1": "advantage", "Dense_2": "value"}  # FullRainbowNetwork's heads -> ours
TAUS = (0.0, 0.025, 0.1)


def stub_unused_imports() -> None:
    """ADAPTED: Dopamine 4.1.2 imports OpenAI baselines and legacy gym (only for its legacy-gym and PPO paths),
    its continuous-control networks and TensorFlow Probability's JAX substrate (broken on current JAX). The DQN
    path calls none of them, so placeholder modules stand in for them."""

    class Anything(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):  # module machinery (__file__, __path__, ...) is looked up, not used
                raise AttributeError(name)
            return Anything(name)

    for name in ("baselines", "baselines.common", "baselines.common.atari_wrappers", "gym",
                 "tensorflow_probability", "tensorflow_probability.substrates",
                 "tensorflow_probability.substrates.jax", "dopamine.jax.continuous_networks"):
        sys.modules[name] = Anything(name)


def gin_bindings(update_period: int, seed: int) -> list[str]:
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
        # this run: the replay ratio (one update every `update_period` agent steps), the seed, frequent scores
        f"JaxDQNAgent.update_period = {update_period}", f"JaxDQNAgent.seed = {seed}",
        "BaseRecycler.logging_period = 1000",
    ]


def random_play(env, steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Transitions of uniformly random play, as Dopamine stores them: 4 stacked 84x84 frames, NHWC, uint8
    (a new episode's first stack repeats nothing: earlier frames are zeros), clipped rewards."""
    states, actions, rewards, next_states, terminals = [], [], [], [], []
    stack = np.zeros((84, 84, 4), np.uint8)
    stack[..., -1] = env.reset()[..., 0]
    for _ in range(steps):
        action = int(rng.integers(env.action_space.n))
        observation, reward, terminal, _ = env.step(action)
        next_stack = np.concatenate([stack[..., 1:], observation], axis=-1)
        for kept, value in zip((states, actions, rewards, next_states, terminals),
                               (stack, action, np.clip(reward, -1, 1), next_stack, float(terminal))):
            kept.append(value)
        stack = next_stack
        if env.game_over:
            stack = np.zeros((84, 84, 4), np.uint8)
            stack[..., -1] = env.reset()[..., 0]
    return {"state": np.stack(states), "action": np.array(actions, np.int32),
            "reward": np.array(rewards, np.float32), "next_state": np.stack(next_states),
            "terminal": np.array(terminals, np.float32)}


def copy_into_torch(flax_params: dict, q_network, heads: dict[str, str] | None = None) -> None:
    """Flax's kernels (kh, kw, in, out) and (in, out) into PyTorch's (out, in, kh, kw) and (out, in). fc1's input
    columns are permuted from Flax's NHWC flatten (h, w, c) to PyTorch's NCHW flatten (c, h, w). ``heads``: Flax's
    names of the output layers -> ours (default: DQN's final_layer -> q)."""
    import torch

    layers = flax_params["params"]
    for flax_name, name in {**LAYERS, **(heads or {"final_layer": "q"})}.items():
        # A writable copy: torch.from_numpy warns on JAX's read-only view.
        kernel = np.array(layers[flax_name]["kernel"])
        if kernel.ndim == 4:
            kernel = kernel.transpose(3, 2, 0, 1)
        elif name == "fc1":
            side = round((kernel.shape[0] / 64) ** 0.5)
            kernel = kernel.reshape(side, side, 64, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
        else:
            kernel = kernel.T
        layer = getattr(q_network, name)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            layer.bias.copy_(torch.from_numpy(np.array(layers[flax_name]["bias"])))


def compare(what: str, theirs: np.ndarray, mine: np.ndarray, scale: float | None = None) -> None:
    """Prints the largest difference between the authors' values and ours, beside their scale."""
    scale = float(np.abs(theirs).max()) if scale is None else scale
    print(f"{what:<58} max |difference| {np.abs(np.asarray(theirs) - mine).max():.2e}  (scale {scale:.2e})")


def compare_epsilon(args, steps: np.ndarray) -> None:
    """Dopamine's linearly_decaying_epsilon with the parsed bindings against dqn_redo.epsilon_at with ``args``."""
    import gin
    from dopamine.jax.agents.dqn import dqn_agent

    import dqn_redo

    setting = lambda name: gin.query_parameter(f"JaxDQNAgent.{name}")
    theirs = [float(dqn_agent.linearly_decaying_epsilon(setting("epsilon_decay_period"), int(step),
                                                        setting("min_replay_history"), setting("epsilon_train")))
              for step in steps]
    compare(f"epsilon at every {steps[1] - steps[0]}th agent step to {steps[-1] + steps[1] - steps[0]:,}",
            np.array(theirs), np.array([dqn_redo.epsilon_at(args, int(step)) for step in steps]))


def check_against_ours(game: str, seed: int, updates: int) -> None:
    """Prints how far apart the authors' parts and ours are on the same inputs (see the module docstring).
    Their settings are the gin bindings already parsed; ours are ``dqn_redo.Args``' defaults."""
    import copy

    import gin
    import jax
    import torch
    from dopamine.discrete_domains import atari_lib
    from dopamine.jax.agents.dqn import dqn_agent
    from dopamine.labs.redo import networks, recycled_dqn_agents, weight_recyclers

    import dqn_redo
    import redo

    args = dqn_redo.Args()
    gamma = gin.query_parameter("JaxDQNAgent.gamma")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = atari_lib.create_atari_environment(game_name=game, sticky_actions=True)
    env.environment.reset(seed=seed)  # the ALE's own generator (sticky actions) too: the same frames every time
    data = random_play(env, 3000, rng)
    n_actions = env.action_space.n

    network = networks.ScalableNatureDQNNetwork(num_actions=n_actions)
    online = network.init(jax.random.PRNGKey(seed), data["state"][0])
    ours = dqn_redo.QNetwork(n_actions, "dopamine")
    copy_into_torch(online, ours)
    nchw = lambda states: torch.from_numpy(np.ascontiguousarray(states.transpose(0, 3, 1, 2)))


    states = data["state"][rng.choice(len(data["state"]), 256, replace=False)]
    q_theirs = np.asarray(jax.vmap(lambda s: network.apply(online, s).q_values)(states))
    with torch.no_grad():
        compare("Q-values at initialization, 256 states", q_theirs, ours(nchw(states)).numpy())

    recycler = weight_recyclers.BaseRecycler(network.layer_names)
    capture = lambda s: network.apply(online, s, capture_intermediates=lambda layer, _: "act" in (layer.name or ""),
                                      mutable=["intermediates"])[1]["intermediates"]
    intermediates = jax.vmap(capture)(states)
    scores_theirs = {LAYERS[name.removesuffix("_act")]: np.asarray(recycler.estimate_neuron_score(value["__call__"][0]))
                     for name, value in intermediates.items() if name != "final_layer_act"}
    scores_ours = redo.dormant_scores(ours, nchw(states))
    for layer, score in scores_theirs.items():
        compare(f"dormant scores, {layer} ({len(score)} neurons)", score, scores_ours[layer].numpy())

    # The same batches through both update rules; the target network stays at initialization (no sync within).
    # A control shows what float32 rounding alone does over as many updates: ours again, from weights that
    # differ from ours by one part in 10^7.
    optimizer = dqn_agent.create_optimizer("adam")  # learning rate and eps from the bindings
    optimizer_state = optimizer.init(online)
    target = online
    target_ours = copy.deepcopy(ours)
    control = copy.deepcopy(ours)
    with torch.no_grad():
        for parameter in control.parameters():
            parameter.mul_(1 + 1e-7 * torch.randn_like(parameter))
    adam = lambda network: torch.optim.Adam(network.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    train_step = dqn_redo.make_train_step(ours, target_ours, adam(ours), compile=False)
    control_step = dqn_redo.make_train_step(control, target_ours, adam(control), compile=False)
    losses_theirs, losses_ours = [], []
    for _ in range(updates):
        index = rng.integers(len(data["state"]), size=32)
        batch = {key: value[index] for key, value in data.items()}
        loss, grad = recycled_dqn_agents.get_gradients(online, network.apply, target, batch, gamma)
        online, optimizer_state = recycled_dqn_agents.apply_updates_jitted(online, grad, optimizer_state, optimizer)
        losses_theirs.append(float(loss))
        torch_batch = dqn_redo.Batch(
            obs=nchw(batch["state"]), actions=torch.from_numpy(batch["action"].astype(np.int64)),
            rewards=torch.from_numpy(batch["reward"]), next_obs=nchw(batch["next_state"]),
            terminated=torch.from_numpy(batch["terminal"]),
            discounts=torch.from_numpy(args.gamma * (1 - batch["terminal"])))
        losses_ours.append(float(train_step(torch_batch)[0]))
        control_step(torch_batch)
    compare(f"Huber loss at each of {updates} updates", np.array(losses_theirs), np.array(losses_ours))
    theirs_now = dqn_redo.QNetwork(n_actions, "dopamine")
    copy_into_torch(online, theirs_now)
    flat = lambda network: torch.cat([p.detach().flatten() for p in network.parameters()]).numpy()
    change = float(np.abs(flat(theirs_now) - flat(target_ours)).max())
    compare(f"all weights after {updates} updates (scale: largest change)", flat(theirs_now), flat(ours), change)
    compare("  control: ours vs ours from weights 1e-7 apart", flat(control), flat(ours), change)

    compare_epsilon(args, np.arange(0, 400_000, 250))


def check_drq_against_ours(game: str, seed: int, updates: int) -> None:
    """DrQ(eps): the authors' functions against ours on the same inputs (see the module docstring). Their settings
    are those of ``labs/atari_100k/configs/DrQ_eps.gin``, as bindings; ours are ``--preset drq-eps``."""
    import copy

    import gin
    import jax
    import jax.numpy as jnp
    import torch
    from dopamine.discrete_domains import atari_lib
    from dopamine.jax.agents.dqn import dqn_agent
    from dopamine.jax.agents.full_rainbow import full_rainbow_agent
    from dopamine.labs.atari_100k import atari_100k_rainbow_agent
    from dopamine.labs.redo import networks

    import dqn_redo

    args = dqn_redo.preset_args("drq-eps")
    gin.parse_config(["JaxDQNAgent.gamma = 0.99", "JaxDQNAgent.update_horizon = 10",
                      "JaxDQNAgent.min_replay_history = 1600", "JaxDQNAgent.epsilon_train = 0.01",
                      "JaxDQNAgent.epsilon_decay_period = 5000", "create_optimizer.learning_rate = 0.0001",
                      "create_optimizer.eps = 0.00015"])
    gamma, horizon = gin.query_parameter("JaxDQNAgent.gamma"), gin.query_parameter("JaxDQNAgent.update_horizon")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = atari_lib.create_atari_environment(game_name=game, sticky_actions=False)
    env.environment.reset(seed=seed)
    data = random_play(env, 3000, rng)
    n_actions = env.action_space.n
    nchw = lambda states: torch.from_numpy(np.ascontiguousarray(states.transpose(0, 3, 1, 2)))
    scaled = lambda states: states.astype(np.float32) / 255.0  # what their preprocess_fn gives the network


    # The network: FullRainbowNetwork as the recycled DrQ agent builds it (dueling, no noise, one atom).
    network = networks.FullRainbowNetwork(num_actions=n_actions, num_atoms=1, noisy=False, dueling=True,
                                          distributional=False, inputs_preprocessed=True)
    support = jnp.linspace(-10.0, 10.0, 1)
    online = network.init(jax.random.PRNGKey(seed), scaled(data["state"][0]), support=support)
    ours = dqn_redo.QNetwork(n_actions, "dopamine", dueling=True)
    copy_into_torch(online, ours, heads=DUELING_HEADS)
    states = data["state"][rng.choice(len(data["state"]), 256, replace=False)]
    q_theirs = np.asarray(jax.vmap(lambda s: network.apply(online, s, support=support).q_values)(scaled(states)))
    with torch.no_grad():
        compare("Q-values at initialization, 256 states (dueling)", q_theirs, ours(nchw(states)).numpy())

    # The update: their full_rainbow_agent.train (10-step double-DQN target, Huber, optax Adam) against
    # make_train_step on the same batches, without augmentation (compared on its own below). The target network is
    # another initialization, fixed, so that online and target differ and double DQN's choice matters.
    optimizer = dqn_agent.create_optimizer("adam")
    optimizer_state = optimizer.init(online)
    target = network.init(jax.random.PRNGKey(seed + 1), scaled(data["state"][0]), support=support)
    target_ours = dqn_redo.QNetwork(n_actions, "dopamine", dueling=True)
    copy_into_torch(target, target_ours, heads=DUELING_HEADS)
    start = copy.deepcopy(ours)
    control = copy.deepcopy(ours)  # ours again, from weights one part in 10^7 apart: what rounding alone does
    with torch.no_grad():
        for parameter in control.parameters():
            parameter.mul_(1 + 1e-7 * torch.randn_like(parameter))
    step_ours, step_control = (dqn_redo.make_train_step(net, target_ours, torch.optim.Adam(
        net.parameters(), lr=args.learning_rate, eps=args.adam_eps), compile=False, double_dqn=True)
        for net in (ours, control))
    cumulative_gamma = gamma ** horizon
    losses_theirs, losses_ours, key = [], [], jax.random.PRNGKey(seed)
    flips, tie_gaps = np.zeros(updates, bool), []  # where double DQN's argmax picks another next action
    for update in range(updates):
        index = rng.integers(len(data["state"]), size=32)
        returns = rng.uniform(-3, 3, size=32).astype(np.float32)  # any 10-step returns of clipped rewards
        terminals = (rng.random(32) < 0.2).astype(np.float32)
        next_q_theirs = np.asarray(jax.vmap(lambda s: network.apply(online, s, support=support).q_values)(
            scaled(data["next_state"][index])))
        with torch.no_grad():
            next_q_ours = ours(nchw(data["next_state"][index])).numpy()
        differ = next_q_theirs.argmax(1) != next_q_ours.argmax(1)
        flips[update] = differ.any()
        top_two = np.sort(next_q_theirs[differ], axis=1)[:, -2:]
        tie_gaps.append(float((top_two[:, 1] - top_two[:, 0]).max()) if differ.any() else None)
        optimizer_state, online, _, mean_loss, key = full_rainbow_agent.train(
            network, online, target, optimizer, optimizer_state, scaled(data["state"][index]),
            data["action"][index], scaled(data["next_state"][index]), returns, terminals, jnp.ones(32), support,
            cumulative_gamma, True, False, False, key)
        losses_theirs.append(float(mean_loss))
        batch = dqn_redo.Batch(obs=nchw(data["state"][index]), actions=torch.from_numpy(data["action"][index].astype(
            np.int64)), rewards=torch.from_numpy(returns), next_obs=nchw(data["next_state"][index]),
            terminated=torch.from_numpy(terminals), discounts=torch.from_numpy(
                (cumulative_gamma * (1 - terminals)).astype(np.float32)))
        losses_ours.append(float(step_ours(batch)[0]))
        step_control(batch)
        if update == 0:
            after_one = dqn_redo.QNetwork(n_actions, "dopamine", dueling=True)
            copy_into_torch(online, after_one, heads=DUELING_HEADS)
            flat = lambda net: torch.cat([p.detach().flatten() for p in net.parameters()]).numpy()
            compare("all weights after 1 update (scale: largest change)", flat(after_one), flat(ours),
                    float(np.abs(flat(after_one) - flat(start)).max()))
    losses_theirs, losses_ours = np.array(losses_theirs), np.array(losses_ours)
    first_flip = int(np.argmax(flips)) if flips.any() else updates
    compare(f"Huber loss, 10-step double-DQN target, updates 1-{first_flip}", losses_theirs[:first_flip],
            losses_ours[:first_flip])
    if flips.any():  # Q-values a rounding apart: double DQN's argmax picks another next action, and the runs part
        print(f"  at update {first_flip + 1} a next action is chosen differently, its top two Q-values "
              f"{tie_gaps[first_flip]:.1e} apart; from there the runs part: loss max |difference| over all updates "
              f"{np.abs(losses_theirs - losses_ours).max():.2e}")
    theirs_now = dqn_redo.QNetwork(n_actions, "dopamine", dueling=True)
    copy_into_torch(online, theirs_now, heads=DUELING_HEADS)
    largest_change = float(np.abs(flat(theirs_now) - flat(start)).max())
    compare(f"all weights after {updates} updates (scale: largest change)", flat(theirs_now), flat(ours),
            largest_change)
    compare("  control: ours vs ours from weights 1e-7 apart", flat(control), flat(ours), largest_change)

    # The augmentation's distribution: offsets and intensity, read off frames whose pixels hold their coordinates.
    n = 4000
    rows = np.broadcast_to(np.arange(84)[:, None] + 100, (84, 84))
    frames = np.stack([rows, rows.T, rows, rows.T], axis=-1).astype(np.uint8)  # NHWC: rows, columns, rows, columns
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    theirs = np.asarray(jax.vmap(lambda k: atari_100k_rainbow_agent.drq_image_augmentation(
        k, scaled(frames)[None]))(keys))[:, 0].astype(np.float64) * 255  # (n, 84, 84, 4), back on [0, 255]
    mine = dqn_redo.drq_augment(torch.from_numpy(np.ascontiguousarray(frames.transpose(2, 0, 1)))[None].expand(
        n, 4, 84, 84)).double().numpy().transpose(0, 2, 3, 1)

    def offsets_and_intensity(out: np.ndarray):
        intensity = out[:, 43, 0, 0] - out[:, 42, 0, 0]
        dy = np.rint(out[:, 42, 0, 0] / intensity).astype(int) - 100 - 42 + 4
        dx = np.rint(out[:, 0, 42, 1] / intensity).astype(int) - 100 - 42 + 4
        i = np.arange(84)
        model = (np.clip(i[None, :] + dy[:, None] - 4, 0, 83) + 100) * intensity[:, None]
        return dy, dx, intensity, float(np.abs(out[:, :, 7, 2] - model).max())

    for name, out in (("theirs", theirs), ("ours", mine)):
        dy, dx, intensity, residual = offsets_and_intensity(out)
        shares = " ".join(f"{share:.3f}" for share in np.bincount(np.concatenate([dy, dx]), minlength=8) / (2 * n))
        at_bounds = np.mean((np.abs(intensity - 0.9) < 1e-4) | (np.abs(intensity - 1.1) < 1e-4))
        print(f"augmentation, {name:<6}: offsets 0..7 shares {shares}; intensity in [{intensity.min():.4f}, "
              f"{intensity.max():.4f}], mean {intensity.mean():.4f}, sd {intensity.std():.4f}, at the clip bounds "
              f"{at_bounds:.3f}; edge-padded crop model residual {residual:.1e}")

    compare_epsilon(args, np.arange(0, 20_000, 10))


def flax_tree(tensors: dict, heads: dict[str, str]) -> dict:
    """The inverse of :func:`copy_into_torch`: tensors shaped like our parameters, keyed by our names
    ("fc1.weight", ...), as a frozen Flax tree {"params": {layer: {"kernel", "bias"}}}. Parameters and Adam's
    moments alike."""
    import flax
    import jax.numpy as jnp

    tree = {}
    for flax_name, name in {**LAYERS, **heads}.items():
        weight = tensors[f"{name}.weight"].detach().cpu().numpy()
        if weight.ndim == 4:
            kernel = weight.transpose(2, 3, 1, 0)
        elif name == "fc1":  # columns from PyTorch's (c, h, w) flatten to Flax's (h, w, c) rows
            side = round((weight.shape[1] / 64) ** 0.5)
            kernel = weight.reshape(-1, 64, side, side).transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])
        else:
            kernel = weight.T
        tree[flax_name] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(tensors[f"{name}.bias"].detach().numpy())}
    return flax.core.freeze({"params": tree})


def check_recycler_against_ours(path: str, seed: int, updates: int) -> None:
    """One ReDo step on a DrQ(eps) run's own state, the authors' ``NeuronRecycler`` against
    ``redo.recycle_dormant``, then what becomes of the recycled neurons. ``path``: a checkpoint of a ``--dueling``
    run saved with ``--checkpoint-buffer`` (network, Adam state and replay).

    Both recycle the same network (ours copied into Flax), with the same Adam state, scored on the same replay
    states at the run's --redo-tau, and both results are copied back into PyTorch. Printed: the scores and masks,
    which entries each changed (parameters and moments), the scale of the re-drawn weights. Then each result, and
    the network without recycling, trains ``updates`` more updates of the run's own rule (its n-step, double DQN
    and augmentation; the target copied as often as the run copied it: after every 4 updates at replay ratio 4
    and --target-network-frequency 1) on the same batches, and the recycled neurons are scored again. A third
    recycler, theirs with ``weight_scaling=True`` (an option of their code, off in the paper's runs: re-drawn rows
    take the mean norm of the kept ones), shows what the scale of the re-drawn weights does. For conv1, which reads
    pixels (all >= 0), also: how many re-drawn channels have incoming weights summing below 0, and how many of 640
    fresh draws are dormant at once."""
    import copy

    import jax
    import jax.numpy as jnp
    import optax
    import torch
    from dopamine.labs.redo import networks, weight_recyclers

    import dqn_redo
    import redo

    checkpoint, error = dqn_redo.load_checkpoint(path)
    if error is None and not checkpoint["args"].get("dueling"):
        error = f"{path} is not a --dueling (DrQ(eps)) run: the authors' recycler is run on their dueling network"
    if error is None and checkpoint.get("buffer") is None:
        error = f"{path} holds no replay buffer: give a checkpoint of a run saved with --checkpoint-buffer"
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    saved = checkpoint["args"]
    tau = saved["redo_tau"]
    n_actions = checkpoint["q_network"]["advantage.weight"].shape[0]
    torch.manual_seed(seed)
    rb = dqn_redo.FrameReplayBuffer(saved["buffer_size"], 4, (84, 84), torch.device("cpu"),
                                    np.random.default_rng(seed), saved["n_step"], saved["gamma"])
    rb.load_state_dict(checkpoint["buffer"])
    states = rb.sample(saved["redo_batch_size"]).obs  # what the recycling is decided on, as in the run
    probe = rb.sample(1024).obs  # other states, more of them, to measure on

    def restored():
        net = dqn_redo.QNetwork(n_actions, saved["network"], dueling=True)
        net.load_state_dict(checkpoint["q_network"])
        adam = torch.optim.Adam(net.parameters(), lr=saved["learning_rate"], eps=saved["adam_eps"])
        dqn_redo.load_optimizer_state(adam, copy.deepcopy(checkpoint["optimizer"]))  # steps too: no shared tensor
        return net, adam

    def moments(net, adam, key):
        return {name: adam.state[param][key] for name, param in net.named_parameters()}

    before, adam_before = restored()
    adam_steps = int(moments(before, adam_before, "step")["fc1.weight"])  # one count for every tensor
    print(f"{path}: step {checkpoint['global_step']:,}, {adam_steps:,} Adam steps; tau {tau:g}, {len(states)} scoring "
          f"states, {updates} updates after")

    # Their recycler on our network, copied into Flax, with our Adam state as optax's.
    network = networks.FullRainbowNetwork(num_actions=n_actions, num_atoms=1, noisy=False, dueling=True,
                                          distributional=False, inputs_preprocessed=True)
    support = jnp.linspace(-10.0, 10.0, 1)
    params = flax_tree(before.state_dict(), DUELING_HEADS)
    nhwc = states.numpy().transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    intermediates = jax.vmap(lambda s: network.apply(
        params, s, support=support, capture_intermediates=lambda layer, _: "act" in (layer.name or ""),
        mutable=["intermediates"])[1]["intermediates"])(nhwc)
    adam_state = (optax.ScaleByAdamState(count=jnp.asarray(adam_steps),
                                         mu=flax_tree(moments(before, adam_before, "exp_avg"), DUELING_HEADS),
                                         nu=flax_tree(moments(before, adam_before, "exp_avg_sq"), DUELING_HEADS)),
                  optax.EmptyState())
    # The agent's layer list for a dueling network: Dense_0 is read by both heads (recycled_atari100k_rainbow_agent).
    layer_names = [*LAYERS, list(DUELING_HEADS)]

    def recycled_by_authors(weight_scaling: bool):
        recycler = weight_recyclers.NeuronRecycler(layer_names, dead_neurons_threshold=tau,
                                                   weight_scaling=weight_scaling)
        new_params, new_state = recycler.recycle_dead_neurons(intermediates, params, jax.random.PRNGKey(seed),
                                                               adam_state)
        net, adam = restored()
        copy_into_torch(new_params, net, heads=DUELING_HEADS)
        for key, tree in (("exp_avg", new_state[0].mu), ("exp_avg_sq", new_state[0].nu)):
            holder = dqn_redo.QNetwork(n_actions, saved["network"], dueling=True)
            copy_into_torch(tree, holder, heads=DUELING_HEADS)
            for (name, param), value in zip(net.named_parameters(), holder.parameters()):
                adam.state[param][key].copy_(value.detach())
        scores = {LAYERS[name]: np.asarray(recycler.estimate_neuron_score(intermediates[f"{name}_act"]["__call__"][0]))
                  for name in LAYERS}
        return net, adam, scores

    theirs_net, theirs_adam, scores_theirs = recycled_by_authors(weight_scaling=False)
    scaled_net, scaled_adam, _ = recycled_by_authors(weight_scaling=True)
    ours_net, ours_adam = restored()
    result = redo.recycle_dormant(ours_net, ours_adam, states, tau=tau, init_fn=dqn_redo.QNetwork.weight_init(
        saved["network"]))
    recycled = {layer: score <= tau for layer, score in result["scores"].items()}
    for layer, score in result["scores"].items():
        flips = int(((scores_theirs[layer] <= tau) != recycled[layer].numpy()).sum())
        compare(f"dormant scores, {layer}: {int(recycled[layer].sum())} recycled, {flips} classified otherwise",
                scores_theirs[layer], score.numpy())

    print("entries changed from the checkpoint, by the authors' recycler only / by ours only / by both "
          "(max |theirs - ours| where neither changed; largest |value| that only one of them changed):")
    for kind, get in (("weights", lambda net, adam: {name: p.detach() for name, p in net.named_parameters()}),
                      ("Adam mu", lambda net, adam: moments(net, adam, "exp_avg")),
                      ("Adam nu", lambda net, adam: moments(net, adam, "exp_avg_sq"))):
        start, mine, their = get(before, adam_before), get(ours_net, ours_adam), get(theirs_net, theirs_adam)
        for name, value in start.items():
            changed_theirs, changed_ours = their[name] != value, mine[name] != value
            neither = ~(changed_theirs | changed_ours)
            rest = float((their[name] - mine[name])[neither].abs().max()) if neither.any() else 0.0
            counts = [int(changed.sum()) for changed in (changed_theirs & ~changed_ours, changed_ours & ~changed_theirs,
                                                         changed_theirs & changed_ours)]
            one_only = changed_theirs ^ changed_ours
            largest = float(value[one_only].abs().max()) if one_only.any() else 0.0
            if any(counts) or rest:
                print(f"  {kind:<8} {name:<17} {counts[0]:>7,} / {counts[1]:>7,} / {counts[2]:>7,}  ({rest:.1e}; "
                      f"{largest:.1e})")

    def row_norms(net, layer):
        return getattr(net, layer).weight.detach().flatten(1).norm(dim=1)

    print("incoming weight norm per neuron, median: kept neurons | re-drawn by theirs | by ours | by theirs, scaled")
    for layer, mask in recycled.items():
        if mask.any():
            print(f"  {layer:<6} {row_norms(before, layer)[~mask].median():.3f} | " + " | ".join(
                f"{row_norms(net, layer)[mask].median():.3f}" for net in (theirs_net, ours_net, scaled_net)))

    # A conv1 channel reads pixels, all >= 0: with a zero bias, one whose incoming weights sum below 0 is mostly off.
    if recycled["conv1"].any():
        mask = recycled["conv1"]
        print(f"the {int(mask.sum())} re-drawn conv1 channels: incoming weights summing below 0, and dormant at once "
              f"(on the {len(probe)} other states) among those / among the others:")
        for name, net in (("theirs", theirs_net), ("ours", ours_net)):
            negative = net.conv1.weight.detach().sum(dim=(1, 2, 3))[mask] < 0
            dormant = redo.dormant_scores(net, probe)["conv1"][mask] <= tau
            print(f"  {name:<6} {int(negative.sum())} below 0, {int((dormant & negative).sum())} of them dormant; "
                  f"{int((dormant & ~negative).sum())} of the other {int((~negative).sum())}")
    # How likely any re-draw is to be born dormant: many fresh draws of the run's initializer, each channel scored
    # against the mean activation of conv1 as it is (the denominator of the score, which one channel barely moves).
    conv1, pixels = before.conv1, probe.float() / 255.0
    with torch.no_grad():
        layer_mean = torch.relu(conv1(pixels)).mean(dim=(0, 2, 3)).mean()
        born_dormant, negative = [], []
        for _ in range(20):
            fresh = torch.empty_like(conv1.weight)
            dqn_redo.QNetwork.weight_init(saved["network"])(fresh)
            activation = torch.relu(torch.nn.functional.conv2d(pixels, fresh, None, conv1.stride, conv1.padding))
            born_dormant.append(activation.mean(dim=(0, 2, 3)) / layer_mean <= tau)
            negative.append(fresh.sum(dim=(1, 2, 3)) < 0)
    born_dormant, negative = torch.cat(born_dormant), torch.cat(negative)
    print(f"{len(born_dormant)} fresh draws of a conv1 channel with zero bias: "
          f"{born_dormant.float().mean():.0%} dormant at once; {born_dormant[negative].float().mean():.0%} of the "
          f"{int(negative.sum())} whose weights sum below 0, "
          f"{born_dormant[~negative].float().mean():.0%} of the others")

    # The same updates for each, from the same seeds: the run's update rule, and its target copies.
    updates_per_copy = max(1, round(saved["replay_ratio"] * saved["target_network_frequency"]))
    arms = {"no recycling": (before, adam_before), "authors' recycler": (theirs_net, theirs_adam),
            "ours (redo.py)": (ours_net, ours_adam), "authors', weight_scaling": (scaled_net, scaled_adam)}
    marks = sorted({0, updates // 4, updates // 2, updates})
    print(f"recycled neurons (chosen above) still or again dormant at tau {tau:g}, on {len(probe)} other states, "
          f"after k updates (the target copied every {updates_per_copy}); in brackets their mean score and the whole "
          f"network's dormant fraction; then the share per layer at each k:")
    print(f"  {'':<26}" + "".join(f"{'k = ' + format(k, ','):>26}" for k in marks))
    for label, (net, adam) in arms.items():
        target = copy.deepcopy(net)
        step = dqn_redo.make_train_step(net, target, adam, compile=False, double_dqn=saved["double_dqn"],
                                        augment=dqn_redo.drq_augment if saved["augmentation"] == "drq" else None)
        rb.rng = np.random.default_rng(seed + 1)
        torch.manual_seed(seed + 1)
        cells, per_layer = [], {layer: [] for layer, mask in recycled.items() if mask.any()}
        for k in range(updates + 1):
            if k in marks:
                scores = redo.dormant_scores(net, probe)
                chosen = torch.cat([scores[layer][mask] for layer, mask in recycled.items()])
                total = redo.dormant_fractions(scores, tau)["total"]
                cells.append(f"{(chosen <= tau).float().mean():.0%} ({chosen.mean():.2f}, {total:.1%})")
                for layer in per_layer:
                    per_layer[layer].append(f"{(scores[layer][recycled[layer]] <= tau).float().mean():.0%}")
            if k < updates:
                step(rb.sample(saved["batch_size"]))
                if (k + 1) % updates_per_copy == 0:
                    target.load_state_dict(net.state_dict())
        print(f"  {label:<26}" + "".join(f"{cell:>26}" for cell in cells) + "    per layer: " + ", ".join(
            f"{layer} {' / '.join(shares)} of {int(recycled[layer].sum())}" for layer, shares in per_layer.items()),
            flush=True)


def dopamine_2023_replay():
    """Dopamine's numpy replay, ``replay_memory/circular_replay_buffer.py``, as the authors' DrQ(eps) agent stored
    and sampled with it (its prioritized subclass adds only priorities). dopamine-rl 4.1 dropped the file; 4.0.9's has
    the same syntax tree as at the ReDo release commit a29eb3e, docstrings and ``import gin.tf`` -> ``import gin``
    aside. Its wheel is downloaded once, from PyPI with ``pip download --no-deps``, into .dopamine-4.0.9/."""
    import glob
    import subprocess
    import zipfile

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".dopamine-4.0.9")
    if not glob.glob(os.path.join(folder, "dopamine_rl-4.0.9-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "dopamine-rl==4.0.9", "-d",
                        folder], check=True)
    wheel = glob.glob(os.path.join(folder, "dopamine_rl-4.0.9-*.whl"))[0]
    source = zipfile.ZipFile(wheel).read("dopamine/replay_memory/circular_replay_buffer.py")
    module = types.ModuleType("dopamine_4_0_9_circular_replay_buffer")
    exec(compile(source, f"{wheel}:dopamine/replay_memory/circular_replay_buffer.py", "exec"), module.__dict__)
    return module


def check_replay_against_ours(game: str, seed: int, steps: int, game_steps: int) -> None:
    """The authors' n-step replay against ``dqn_redo.FrameReplayBuffer`` on the same stream: ``steps`` agent steps of
    random play in ``--preset drq-eps``'s environment (no-ops, a lost life terminal), each game cut at ``game_steps``
    so that truncations happen. Each step goes into ours as the training loop adds it and into theirs as their agent
    does (the frame acted on, the action, the clipped reward, ``terminal``, and ``episode_end`` at a truncation).
    Then every transition that either buffer would sample is fetched from both, and everything is compared: action,
    10-step return, terminal flag, the discount the target uses (theirs: gamma^10 unless terminal), the state and
    next-state stacks (frame by frame), and which transitions each one samples."""
    import torch

    import dqn_redo

    replay_module = dopamine_2023_replay()
    args = dqn_redo.preset_args("drq-eps", env_id=f"{game}-v4", max_episode_steps=game_steps, seed=seed)
    env, rng = dqn_redo.make_env(args), np.random.default_rng(seed)
    capacity = 2 * steps + 1000  # no wrap-around: every transition stays in both
    ours = dqn_redo.FrameReplayBuffer(capacity, 4, (84, 84), torch.device("cpu"), np.random.default_rng(seed),
                                      args.n_step, args.gamma)
    theirs = replay_module.OutOfGraphReplayBuffer((84, 84), 4, capacity, args.batch_size,
                                                  update_horizon=args.n_step, gamma=args.gamma)
    slots, indices, life_step, truncated_at = [], [], [], []
    events = {"lives lost": 0, "games over": 0, "truncations": 0}
    obs, _ = env.reset(seed=seed)
    steps_in_life = 0
    for t in range(steps):
        action = int(rng.integers(env.action_space.n))
        next_obs, reward, terminated, truncated, info = env.step(action)
        reward = float(np.clip(reward, -1.0, 1.0))
        ours.add(obs, action, reward, next_obs, terminated, truncated)
        theirs.add(obs[-1], action, reward, terminated, episode_end=truncated)
        slots.append(ours.current - 1)  # the slot this transition went to (no wrap-around)
        indices.append(theirs.cursor() - 1)
        life_step.append(steps_in_life)
        steps_in_life = 0 if terminated or truncated else steps_in_life + 1
        if terminated or truncated:
            events["truncations" if truncated else "games over" if "episode" in info else "lives lost"] += 1
        if truncated:
            truncated_at.append(t)
        obs = env.reset()[0] if terminated or truncated else next_obs
    slots, indices, life_step = np.array(slots), np.array(indices), np.array(life_step)
    valid_ours = ours._sampleable(slots)
    valid_theirs = np.array([theirs.is_valid_transition(int(i)) for i in indices])
    both = valid_ours & valid_theirs
    print(f"{game}, seed {seed}: {steps:,} agent steps of random play, games cut at {game_steps:,}: "
          + ", ".join(f"{count} {name}" for name, count in events.items()))
    print(f"transitions either samples: {int((valid_ours | valid_theirs).sum()):,}; both: {int(both.sum()):,}")

    ours.sample_slots = lambda n: slots[both]  # fetch exactly these, in this order
    mine = ours.sample(int(both.sum()))
    state, action, reward, next_state, _, _, terminal, _ = theirs.sample_transition_batch(
        int(both.sum()), indices=indices[both])
    state, next_state = state.transpose(0, 3, 1, 2), next_state.transpose(0, 3, 1, 2)
    terminal = terminal.astype(bool)
    their_discount = np.where(terminal, 0.0, args.gamma ** args.n_step)  # their agent's cumulative_gamma
    print(f"  actions differ: {int((mine.actions.numpy() != action).sum())}; terminal flags differ: "
          f"{int((mine.terminated.numpy().astype(bool) != terminal).sum())}; 10-step returns: max |ours - theirs| "
          f"{np.abs(mine.rewards.numpy() - reward).max():.1e} (largest |return| {np.abs(reward).max():.2f}); "
          f"discounts: max |ours - theirs| {np.abs(mine.discounts.numpy() - their_discount).max():.1e}")

    def stacks(name: str, ours_frames: np.ndarray, their_frames: np.ndarray) -> np.ndarray:
        differs = (ours_frames != their_frames).any(axis=(2, 3))  # (transitions, 4 frames)
        zero_padded = (their_frames == 0).all(axis=(2, 3))
        # Where theirs has a zero frame, ours repeats the oldest real frame of the stack.
        oldest_real = ours_frames[np.arange(len(ours_frames)), zero_padded.sum(axis=1).clip(max=3)]
        explained = differs & zero_padded & (ours_frames == oldest_real[:, None]).all(axis=(2, 3))
        differing = differs.any(axis=1)
        print(f"  {name} stacks: {int((~differing).sum()):,} equal frame for frame, {int(differing.sum()):,} differ; "
              f"of those, {int((differs == explained).all(axis=1)[differing].sum()):,} only where theirs has a zero "
              f"frame and ours repeats the first frame of the life")
        return differing

    differing = stacks("state", mine.obs.numpy(), state)
    print(f"    the state stacks that differ are at steps {sorted(set(life_step[both][differing].tolist()))} of a life")
    bootstraps = ~terminal
    stacks("next-state (where the target bootstraps)", mine.next_obs.numpy()[bootstraps], next_state[bootstraps])

    # Which transitions only one of them samples, and why.
    before_truncation = np.zeros(steps, bool)
    for t in [*truncated_at, steps - 1]:
        before_truncation[max(0, t - args.n_step + 1):t + 1] = True
    only_ours, only_theirs = np.flatnonzero(valid_ours & ~valid_theirs), np.flatnonzero(valid_theirs & ~valid_ours)
    print(f"  sampled by ours only: {len(only_ours)}, of which {int(before_truncation[only_ours].sum())} in the last "
          f"{args.n_step} steps before a truncation or the stream's end (theirs never samples a window that reaches "
          f"an episode end without a terminal, nor the newest transition, whose next frame it stores with the next "
          f"add)")
    print(f"  sampled by theirs only: {len(only_theirs)}")


def check_env_against_ours(game: str, seed: int, lives: int) -> None:
    """Dopamine's Atari preprocessing (``atari_lib.AtariPreprocessing`` with ``terminal_on_life_loss``, as
    ``DrQ_eps.gin`` binds it; its step loop is as at a29eb3e) against ``dqn_redo.make_env`` of ``--preset drq-eps``,
    from the same seed with the same random actions, one life at a time: every observation, reward and terminal flag
    up to the step that loses the life, and at that step how many emulator frames each played. No-ops are left out
    of ours (``--noop-max 0``): Dopamine plays them in its runner, not in the environment; after each life, a new
    game is started with 1-29 no-op frames as that runner plays them, to see which frame it then observes."""
    import cv2
    from dopamine.discrete_domains import atari_lib

    import dqn_redo

    args = dqn_redo.preset_args("drq-eps", env_id=f"{game}-v4", noop_max=0)
    rng = np.random.default_rng(seed)
    compared, frame_diff, reward_diff, flags_differ, at_loss, noop_starts = 0, 0, 0.0, 0, [], []
    for life in range(lives):
        ours = dqn_redo.make_env(args)
        theirs = atari_lib.create_atari_environment(game_name=game, sticky_actions=False)
        theirs.terminal_on_life_loss = True
        ours_obs, _ = ours.reset(seed=seed + life)
        theirs.environment.reset(seed=seed + life)
        theirs_obs = theirs.reset()
        ale_ours, ale_theirs = ours.unwrapped.ale, theirs.environment.unwrapped.ale
        for _ in range(args.max_episode_steps):
            frame_diff = max(frame_diff, int(np.abs(ours_obs[-1].astype(int) - theirs_obs[..., 0]).max()))
            action = int(rng.integers(ours.action_space.n))
            frames_before = (ale_ours.getEpisodeFrameNumber(), ale_theirs.getEpisodeFrameNumber())
            ours_obs, ours_reward, terminated, truncated, _ = ours.step(action)
            theirs_before = theirs_obs
            theirs_obs, theirs_reward, terminal, _ = theirs.step(action)
            compared += 1
            reward_diff = max(reward_diff, abs(ours_reward - theirs_reward))
            flags_differ += int(terminated != terminal)
            if terminated or terminal or truncated:
                played = (ale_ours.getEpisodeFrameNumber() - frames_before[0],
                          ale_theirs.getEpisodeFrameNumber() - frames_before[1])
                same = bool((ours_obs[-1] == theirs_obs[..., 0]).all())
                stale = bool((theirs_obs == theirs_before).all())
                at_loss.append((played, same, stale))
                break
        # The no-ops of their runner (MaxEpisodeEvalRunner._run_no_ops): raw ALE frames, then the observation is
        # pooled from the screen buffer as it stands.
        first = theirs.reset()
        noops = 1 + life % 29
        for _ in range(noops):
            theirs.environment.unwrapped.ale.act(0)
        after_noops = theirs._pool_and_resize()
        current = cv2.resize(theirs.environment.unwrapped.ale.getScreenGrayscale(), (84, 84),
                             interpolation=cv2.INTER_AREA)
        noop_starts.append((bool((after_noops == first).all()), bool((after_noops[..., 0] == current).all())))
        ours.close()
        theirs.close()
    print(f"{game}: {lives} first lives from seeds {seed}..{seed + lives - 1}, random actions, "
          f"{compared:,} agent steps")
    print(f"  every observation before a life's last step: max |frame difference| {frame_diff} (pixels 0-255); "
          f"every step: max |reward difference| {reward_diff:g}, terminal flags that differ {flags_differ}")
    counts = collections.Counter(played for played, _, _ in at_loss)
    print("  emulator frames played in the step that lost the life, ours / theirs: "
          + ", ".join(f"{o} / {t}: {n}" for (o, t), n in sorted(counts.items())))
    short = [(played, stale) for played, _, stale in at_loss if played[1] <= 2]
    print(f"  that step's observation equal in both: {sum(same for _, same, _ in at_loss)} of {len(at_loss)}; where "
          f"theirs stopped within 2 frames, its observation is its previous step's: {sum(s for _, s in short)} of "
          f"{len(short)} (its screen buffer is filled on a step's last two frames only)")
    print(f"  their runner's no-op start (1-29 frames here): its observation is the game's first frame in "
          f"{sum(first for first, _ in noop_starts)} of {len(noop_starts)} games, the frame after the no-ops in "
          f"{sum(now for _, now in noop_starts)} (ours: the frame after them)")


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
    parser.add_argument("--seed", type=int, default=1,
                        help="seeds the agent (network, exploration, replay) and the ALE")
    parser.add_argument("--out-dir", default="runs", help="the run folder goes under it")
    parser.add_argument("--check", action="store_true", help="compare the authors' parts with ours, then exit")
    parser.add_argument("--check-updates", type=int, default=300, help="updates compared by --check")
    parser.add_argument("--check-drq", action="store_true", help="compare the authors' DrQ(eps) parts with ours")
    parser.add_argument("--check-replay", type=int, metavar="STEPS", help="compare the authors' n-step replay with "
                        "ours on STEPS agent steps of random play (downloads dopamine-rl 4.0.9's wheel once)")
    parser.add_argument("--check-replay-game-steps", type=int, default=400, help="with --check-replay: each game is "
                        "cut (truncated) after this many agent steps, so that truncations happen")
    parser.add_argument("--check-env", type=int, metavar="LIVES", help="compare Dopamine's Atari preprocessing with "
                        "ours over the first life of LIVES games (seeds --seed, --seed + 1, ...)")
    parser.add_argument("--check-recycler", metavar="CHECKPOINT", help="a DrQ(eps) run's checkpoint (with its "
                        "replay): recycle it with the authors' NeuronRecycler and with ours, then train each")
    args = parser.parse_args()
    if args.replay_ratio <= 0 or args.replay_ratio > 1 or (1 / args.replay_ratio) % 1:
        parser.error("--replay-ratio must be 1/k for a whole k (Dopamine updates once every k agent steps)")
    if args.total_timesteps < 1:
        parser.error("--total-timesteps must be positive")
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    if f"ALE/{args.game}-v5" not in gymnasium.registry:
        parser.error(f"no ALE game named {args.game!r}: give the name as in ALE/<name>-v5, e.g. DemonAttack")
    if args.check_replay is not None and (args.check_replay < 100 or args.check_replay_game_steps < 20):
        parser.error("--check-replay needs at least 100 agent steps and --check-replay-game-steps at least 20, so "
                     "that 10-step windows fit in an episode")
    if args.check_env is not None and args.check_env < 1:
        parser.error("--check-env needs at least 1 game (LIVES: the first life of each is compared)")
    update_period = round(1 / args.replay_ratio)
    run_dir = os.path.join(args.out_dir, f"dopamine_{args.game}__rr{args.replay_ratio:g}__{args.seed}")
    checking = (args.check or args.check_drq or args.check_recycler or args.check_replay is not None
                or args.check_env is not None)
    if os.path.exists(run_dir) and not checking:
        parser.error(f"{run_dir} exists: move it away or pick another --seed/--out-dir")

    missing = [name for name in ("gin", "jax", "flax", "optax", "tensorflow", "dopamine")
               if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} not installed: this script runs in a venv of its own (python3 -m venv "
                     ".venv-dopamine, then pip install -r requirements-dopamine.txt and pip install --no-deps "
                     "dopamine-rl==4.1.2)")
    stub_unused_imports()
    import gin
    import jax
    from dopamine.discrete_domains import atari_lib
    from dopamine.labs.redo import recycled_dqn_agents

    if args.check_drq:
        check_drq_against_ours(args.game, args.seed, args.check_updates)
        return
    if args.check_env is not None:
        check_env_against_ours(args.game, args.seed, args.check_env)
        return
    if args.check_replay is not None:
        check_replay_against_ours(args.game, args.seed, args.check_replay, args.check_replay_game_steps)
        return
    if args.check_recycler:
        check_recycler_against_ours(args.check_recycler, args.seed, args.check_updates)
        return
    bindings = gin_bindings(update_period, args.seed)
    gin.parse_config(bindings)
    if args.check:
        check_against_ours(args.game, args.seed, args.check_updates)
        return
    env = atari_lib.create_atari_environment(game_name=args.game, sticky_actions=True)
    env.environment.reset(seed=args.seed)
    agent = recycled_dqn_agents.RecycledDQNAgent(num_actions=env.action_space.n)
    recycler = agent.weight_recycler  # reset_mode None: the baseline, which only logs

    def sample_scoring_states():
        # ADAPTED: the lab calls the 2023 buffer's sample_transition_batch; this is the same uniform draw of
        # batch_size_statistics (256) states from Dopamine 4.1.2's buffer.
        return agent.preprocess_fn(agent._replay.sample(size=agent.batch_size_statistics).state)

    agent._sample_batch_for_statistics = sample_scoring_states

    writer, scalar = event_writer(run_dir, {
        "env_id": f"{args.game}-v4", "replay_ratio": args.replay_ratio, "enable_redo": False, "redo_tau": 0.1,
        "seed": args.seed, "code": "Dopamine", "dopamine_settings": "; ".join(bindings)})
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
    try:
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
    finally:  # Ctrl-C keeps what was logged
        writer.close()


if __name__ == "__main__":
    main()
