"""FrameReplayBuffer against a naive buffer that stores whole (obs, next_obs) stacks."""

import numpy as np
import pytest
import scipy.stats
import torch

from dqn_redo import Args, FrameReplayBuffer, make_env

STACK = 4


class Stream:
    """Random episodes of random frames, stacked as gymnasium's FrameStackObservation does after reset."""

    def __init__(self, seed: int, shape=(5, 6), max_episode_length: int = 25):
        self.rng, self.shape, self.max_len = np.random.default_rng(seed), shape, max_episode_length

    def transitions(self, n: int):
        """Yields (obs, action, reward, next_obs, terminated, truncated); reward = the transition's id."""
        produced = 0
        while produced < n:
            frame = self.rng.integers(0, 256, self.shape, dtype=np.uint8)
            obs = np.stack([frame] * STACK)
            length = int(self.rng.integers(1, self.max_len + 1))
            end = self.rng.choice(["terminated", "truncated", "both"])
            for t in range(length):
                next_frame = self.rng.integers(0, 256, self.shape, dtype=np.uint8)
                next_obs = np.concatenate([obs[1:], next_frame[None]])
                last = t == length - 1
                terminated, truncated = last and end != "truncated", last and end != "terminated"
                yield obs, int(self.rng.integers(18)), float(produced), next_obs, terminated, truncated
                produced += 1
                obs = next_obs
                if produced == n:
                    return


def fill(buffer, stream, n):
    reference = []
    for obs, action, reward, next_obs, terminated, truncated in stream.transitions(n):
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        reference.append((obs.copy(), action, next_obs.copy(), terminated, truncated))
    return reference


def check_samples(buffer, reference, samples: int) -> list[int]:
    batch = buffer.sample(samples)
    ids = batch.rewards.long().tolist()
    assert all(len(reference) - buffer.capacity <= i < len(reference) for i in ids), "sampled overwritten data"
    for k, i in enumerate(ids):
        obs, action, next_obs, terminated, _ = reference[i]
        assert batch.rewards[k].item() == i
        assert np.array_equal(batch.obs[k].numpy(), obs), i
        assert np.array_equal(batch.next_obs[k].numpy(), next_obs), i
        assert batch.actions[k].item() == action
        assert batch.terminated[k].item() == float(terminated)
    return ids


@pytest.mark.parametrize("seed, capacity, max_len", [(0, 40, 25), (1, 57, 6), (2, 16, 40), (3, 100, 2)])
def test_matches_naive_reference_through_many_wraparounds(seed, capacity, max_len):
    buffer = FrameReplayBuffer(capacity, STACK, (5, 6), torch.device("cpu"), np.random.default_rng(seed))
    stream = Stream(seed, max_episode_length=max_len)
    reference = []
    transitions = stream.transitions(12 * capacity)
    for step, transition in enumerate(transitions):
        obs, action, reward, next_obs, terminated, truncated = transition
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        reference.append((obs.copy(), action, next_obs.copy(), terminated, truncated))
        if step > 20 and step % 7 == 0:
            check_samples(buffer, reference, 64)
    ids = []
    for _ in range(100):
        ids += check_samples(buffer, reference, 100)
    # Uniform over exactly what a frame ring of `capacity` slots can hold.
    expected = expected_stored_ids(reference, capacity)
    assert set(ids) == expected
    assert len(expected) >= capacity - capacity // 2 - STACK
    counts = np.bincount(ids)[sorted(expected)]
    # Chi-square goodness of fit to the uniform distribution over those transitions (10,000 draws).
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def expected_stored_ids(reference, capacity: int) -> set[int]:
    """The capacity contract, from the frames' contents alone: the buffer keeps the newest `capacity`
    distinct frames, and a transition is stored when every frame of its obs and next_obs is among them.
    (Stream frames are random 5x6 arrays, so distinct contents are distinct frames.)"""
    order: dict[bytes, int] = {}  # frame bytes -> rank in the order frames first appear
    needs = []
    for obs, _, next_obs, _, _ in reference:
        for frame in (*obs, next_obs[-1]):
            order.setdefault(frame.tobytes(), len(order))
        needs.append(min(order[frame.tobytes()] for frame in (*obs, next_obs[-1])))
    oldest_kept = len(order) - capacity
    return {i for i, oldest_needed in enumerate(needs) if oldest_needed >= oldest_kept}


def test_reset_padding_and_truncation_final_observation():
    buffer = FrameReplayBuffer(64, STACK, (2, 2), torch.device("cpu"), np.random.default_rng(0))
    f = [np.full((2, 2), v, dtype=np.uint8) for v in range(10)]
    first = np.stack([f[1]] * 4)
    # Episode 1: two steps, then truncated at its final frame f[3].
    buffer.add(first, 0, 0.0, np.stack([f[1], f[1], f[1], f[2]]), False, False)
    buffer.add(np.stack([f[1], f[1], f[1], f[2]]), 1, 1.0, np.stack([f[1], f[1], f[2], f[3]]), False, True)
    # Episode 2 starts from f[5], padded with itself, never with episode 1's frames.
    buffer.add(np.stack([f[5]] * 4), 2, 2.0, np.stack([f[5], f[5], f[5], f[6]]), True, False)
    by_reward = {}
    while len(by_reward) < 3:
        batch = buffer.sample(16)
        for k in range(16):
            by_reward[batch.rewards[k].item()] = (batch.obs[k, :, 0, 0].tolist(), batch.next_obs[k, :, 0, 0].tolist(),
                                                  batch.terminated[k].item())
    assert by_reward[0.0] == ([1, 1, 1, 1], [1, 1, 1, 2], 0.0)
    assert by_reward[1.0] == ([1, 1, 1, 2], [1, 1, 2, 3], 0.0)  # truncation: bootstrap from the real f[3]
    assert by_reward[2.0] == ([5, 5, 5, 5], [5, 5, 5, 6], 1.0)


def test_an_episode_entered_in_its_middle_is_stored_exactly():
    # A first observation not padded by repeating its frame (a resume without saved replay, or zero
    # padding) is stored frame by frame: its stacks come back exactly.
    buffer = FrameReplayBuffer(16, STACK, (2, 2), torch.device("cpu"), np.random.default_rng(0))
    f = [np.full((2, 2), v, dtype=np.uint8) for v in range(10)]
    buffer.add(np.stack([f[0], f[0], f[3], f[4]]), 0, 0.0, np.stack([f[0], f[3], f[4], f[5]]), False, False)
    buffer.add(np.stack([f[0], f[3], f[4], f[5]]), 1, 1.0, np.stack([f[3], f[4], f[5], f[6]]), True, False)
    seen = {}
    while len(seen) < 2:
        batch = buffer.sample(8)
        for k in range(8):
            seen[batch.rewards[k].item()] = (batch.obs[k, :, 0, 0].tolist(), batch.next_obs[k, :, 0, 0].tolist())
    assert seen[0.0] == ([0, 0, 3, 4], [0, 3, 4, 5])
    assert seen[1.0] == ([0, 3, 4, 5], [3, 4, 5, 6])


def test_real_game_frames_are_returned_bit_identical():
    env = make_env(Args(env_id="DemonAttack-v4", terminal_on_life_loss=True))
    buffer = FrameReplayBuffer(300, STACK, (84, 84), torch.device("cpu"), np.random.default_rng(3))
    rng = np.random.default_rng(3)
    reference, ends = [], 0
    obs, _ = env.reset(seed=3)
    for i in range(1500):  # 5 wrap-arounds, with several lives lost (terminal for learning)
        action = int(rng.integers(env.action_space.n))
        next_obs, _, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, float(i), next_obs, terminated, truncated)
        reference.append((obs.copy(), action, next_obs.copy(), terminated, truncated))
        obs = next_obs
        if terminated or truncated:
            ends += 1
            obs, _ = env.reset()
    env.close()
    assert ends >= 2
    for _ in range(10):
        check_samples(buffer, reference, 64)


def test_memory_per_transition_and_arrays_allocated_once():
    capacity = 20_000
    buffer = FrameReplayBuffer(capacity, STACK, (84, 84), torch.device("cpu"), np.random.default_rng(0))
    arrays = [buffer.frames, buffer.actions, buffer.rewards, buffer.terminated, buffer.has_transition, buffer.offset]
    total = sum(a.nbytes for a in arrays)
    assert total == FrameReplayBuffer.bytes_needed(capacity)
    assert total == 7_067 * capacity  # an 84x84 frame, int32 action, float32 reward, three bytes of flags
    assert set(vars(buffer)) >= {"frames", "actions", "rewards", "terminated", "has_transition", "offset"}
    ids_before = [id(a) for a in arrays]
    fill(buffer, Stream(0, shape=(84, 84)), 2 * capacity // 10)
    assert [id(a) for a in (buffer.frames, buffer.actions, buffer.rewards, buffer.terminated,
                            buffer.has_transition, buffer.offset)] == ids_before


def test_sample_types():
    buffer = FrameReplayBuffer(32, STACK, (84, 84), torch.device("cpu"), np.random.default_rng(0))
    fill(buffer, Stream(0, shape=(84, 84)), 40)
    batch = buffer.sample(8)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (8, 4, 84, 84)
    assert batch.next_obs.dtype == torch.uint8 and batch.next_obs.shape == (8, 4, 84, 84)
    # One gathered tensor of 5 frames per transition; obs and next_obs are views of it, one frame apart.
    assert batch.obs.untyped_storage().data_ptr() == batch.next_obs.untyped_storage().data_ptr()
    assert batch.obs.untyped_storage().nbytes() == 8 * 5 * 84 * 84
    assert batch.actions.dtype == torch.int64 and batch.rewards.dtype == torch.float32
    assert batch.terminated.dtype == torch.float32


def test_same_seed_same_samples():
    def draw(seed):
        buffer = FrameReplayBuffer(50, STACK, (5, 6), torch.device("cpu"), np.random.default_rng(seed))
        fill(buffer, Stream(0), 120)
        return buffer.sample(32).rewards

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


@pytest.mark.parametrize("stop_at", [97, 102])  # Stream(0): in the middle of an episode, and right at an episode's end
def test_a_buffer_restored_from_its_state_dict_continues_identically(stop_at):
    def new_buffer():
        return FrameReplayBuffer(40, STACK, (5, 6), torch.device("cpu"), np.random.default_rng(3))

    original, restored = new_buffer(), new_buffer()
    stream = Stream(0).transitions(stop_at + 60)
    for _ in range(stop_at):
        original.add(*next(stream))
    assert original.episode_open == (stop_at == 97)
    restored.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in original.state_dict().items()})
    for transition in stream:  # both continue with the same transitions
        original.add(*transition)
        restored.add(*transition)
    for name in FrameReplayBuffer._ARRAYS + ("head", "slots_written", "current", "episode_open"):
        assert np.array_equal(getattr(original, name), getattr(restored, name)), name
    a, b = original.sample(64), restored.sample(64)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_batches_of_one_and_of_more_than_the_buffer_holds():
    buffer = FrameReplayBuffer(40, STACK, (5, 6), torch.device("cpu"), np.random.default_rng(0))
    reference = fill(buffer, Stream(0), 100)
    assert len(check_samples(buffer, reference, 1)) == 1
    assert len(set(check_samples(buffer, reference, 5000))) == len(expected_stored_ids(reference, 40))


def test_a_buffer_too_small_for_one_stack_says_so():
    buffer = FrameReplayBuffer(STACK, STACK, (5, 6), torch.device("cpu"), np.random.default_rng(0))
    fill(buffer, Stream(0, max_episode_length=1000), 10)  # every stack + next frame needs 5 slots
    with pytest.raises(ValueError, match="^the replay buffer holds no complete transition to sample$"):
        buffer.sample(8)
