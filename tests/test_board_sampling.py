"""board.sampling against hand-computed distributions."""
import numpy as np
import pytest

from board.sampling import (
    GREEDY, SamplingConfig, apply_openai_penalties, apply_repetition_penalty, sample, token_distribution,
)


def softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


def test_temperature_one_without_filters_is_plain_softmax():
    cfg = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    probs = token_distribution(np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32), cfg)
    np.testing.assert_allclose(probs, [0.6439142598879722, 0.23688281808991013, 0.08714431874203257, 0.03205860328008499], rtol=1e-9)


def test_temperature_sharpens():
    cfg = SamplingConfig(temperature=0.5, top_k=0, top_p=1.0)
    probs = token_distribution(np.array([1.0, 0.0], dtype=np.float32), cfg)
    # softmax([2, 0]) = [e^2, 1] / (e^2 + 1)
    np.testing.assert_allclose(probs, [np.e**2 / (np.e**2 + 1), 1 / (np.e**2 + 1)], rtol=1e-9)


def test_top_k_keeps_the_k_largest_renormalised():
    cfg = SamplingConfig(temperature=1.0, top_k=2, top_p=1.0)
    probs = token_distribution(np.array([0.0, 2.0, -1.0, 1.0], dtype=np.float32), cfg)
    # e^2 / (e^2 + e) and e / (e^2 + e) on ids 1 and 3
    np.testing.assert_allclose(probs, [0.0, 0.7310585786300049, 0.0, 0.2689414213699951], rtol=1e-9)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = np.log(np.array([0.15, 0.5, 0.05, 0.3], dtype=np.float64)).astype(np.float32)
    probs = token_distribution(logits, SamplingConfig(temperature=1.0, top_k=0, top_p=0.7))
    # 0.5 (mass before 0) and 0.3 (mass before 0.5 < 0.7) stay; 0.15 starts at 0.8 >= 0.7
    np.testing.assert_allclose(probs, [0.0, 0.625, 0.0, 0.375], rtol=1e-6)
    probs = token_distribution(logits, SamplingConfig(temperature=1.0, top_k=0, top_p=0.4))
    np.testing.assert_allclose(probs, [0.0, 1.0, 0.0, 0.0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    out = apply_repetition_penalty(np.array([2.0, -1.0, 0.5], dtype=np.float32), [0, 1, 1], 2.0)
    np.testing.assert_allclose(out, [1.0, -2.0, 0.5])


def test_greedy_takes_argmax_after_penalty():
    logits = np.array([2.0, 1.5, -3.0], dtype=np.float32)
    assert sample(logits, GREEDY, np.random.default_rng(0)) == 0
    penalised = SamplingConfig(temperature=0.0, repetition_penalty=2.0)
    assert sample(logits, penalised, np.random.default_rng(0), history=[0]) == 1


def test_sampling_follows_the_distribution_and_the_seed():
    logits = np.array([1.0, 0.0, 2.0, -0.5], dtype=np.float32)
    cfg = SamplingConfig(temperature=1.0, top_k=3, top_p=1.0)
    rng = np.random.default_rng(123)
    draws = np.array([sample(logits, cfg, rng) for _ in range(20000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    expected = np.zeros(4)
    expected[[0, 1, 2]] = softmax([1.0, 0.0, 2.0])
    np.testing.assert_allclose(freq, expected, atol=0.012)
    assert freq[3] == 0.0  # filtered by top-k, never drawn
    a = [sample(logits, cfg, np.random.default_rng(7)) for _ in range(5)]
    b = [sample(logits, cfg, np.random.default_rng(7)) for _ in range(5)]
    assert a == b


@pytest.mark.parametrize(
    "kwargs, word",
    [({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"), ({"top_p": 0.0}, "top_p"),
     ({"repetition_penalty": 0}, "repetition_penalty"), ({"temperature": float("nan")}, "temperature"),
     ({"temperature": float("inf")}, "temperature"), ({"repetition_penalty": float("nan")}, "repetition_penalty"),
     ({"repetition_penalty": 1e308}, "repetition_penalty"), ({"top_p": float("nan")}, "top_p")],
)
def test_invalid_config_names_the_option(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingConfig(**kwargs)


def test_openai_penalties_subtract_count_times_frequency_plus_presence_from_generated_tokens():
    logits = np.array([5.0, 4.0, 3.0, 1.0], dtype=np.float32)
    got = apply_openai_penalties(logits, [0, 0, 2, 0], frequency=0.5, presence=1.0)
    np.testing.assert_allclose(got, [5.0 - 3 * 0.5 - 1.0, 4.0, 3.0 - 0.5 - 1.0, 1.0])
    assert apply_openai_penalties(logits, [], 0.5, 1.0) is logits
    cfg = SamplingConfig(temperature=0.0, presence_penalty=2.0)
    # the prompt (history) does not count, the answer (generated) does
    assert sample(logits, cfg, np.random.default_rng(0), history=[0, 0, 0]) == 0
    assert sample(logits, cfg, np.random.default_rng(0), history=[0], generated=[0]) == 1
    with pytest.raises(ValueError, match=r"frequency_penalty 2.5 must be in \[-2.0, 2.0\]"):
        SamplingConfig(frequency_penalty=2.5)
    with pytest.raises(ValueError, match="presence_penalty nan must be a finite number"):
        SamplingConfig(presence_penalty=float("nan"))


def test_model_defaults_override_the_built_in_ones_only_where_the_model_speaks():
    from board.manifest import Sampling
    from board.sampling import model_defaults

    assert model_defaults(Sampling()) == SamplingConfig()
    qwen = model_defaults(Sampling(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05))
    assert qwen == SamplingConfig(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)
    assert model_defaults(Sampling(temperature=0.0)).greedy and model_defaults(Sampling(temperature=0.0)).top_k == SamplingConfig().top_k
