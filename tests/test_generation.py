"""Generation: reproducible sampling, logits equal to the teacher-forced forward, prompts, truncation, filtering;
the sampler's temperature, top-k and top-p."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

from audiomamba import build_model, tokens_to_waveform
from audiomamba.generation import _Stepper, filter_by_likelihood
from audiomamba.sampling import Sampler, gumbel_noise_, sample_from_logits

torch.set_num_threads(1)

TOL = 1e-5
TINY = {
    "vocab_size": 32,
    "backbone.d_model": 8,
    "backbone.n_blocks": [1],
    "backbone.pool": [2, 3],
    "backbone.mixer_options": {"mamba1": {"d_state": 4}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
                               "s4d": {"d_state": 8}},
}


def tiny_lm(spec="sc09_small", **overrides):
    torch.manual_seed(0)
    return build_model(spec, **{**TINY, **overrides})


def test_fixed_seed_reproduces_and_seeds_differ():
    model = tiny_lm()
    a = model.generate(3, 25, seed=11, progress=False)
    b = model.generate(3, 25, seed=11, progress=False)
    c = model.generate(3, 25, seed=12, progress=False)
    assert a.shape == (3, 25) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 32


@pytest.mark.parametrize("spec", ["sc09_small", "sc09_mixed", "sc09_mamba2"])
def test_sampled_logits_equal_teacher_forced_forward(spec):
    overrides = {"backbone.mixer": "mamba2"} if spec == "sc09_mamba2" else {}
    model = tiny_lm("sc09_small" if spec == "sc09_mamba2" else spec, **overrides)
    out = model.generate(2, 29, seed=3, progress=False, return_logits=True, return_log_likelihood=True)
    inputs = torch.cat([torch.full((2, 1), model.config.first_token), out.tokens[:, :-1]], dim=1)
    with torch.no_grad():
        forced, _ = model(inputs)  # (2, 29, V)
    assert out.logits.shape == forced.shape
    assert rel_err(out.logits, forced) < TOL
    logp = torch.log_softmax(forced, -1).gather(-1, out.tokens[..., None])[..., 0].mean(1)
    assert rel_err(out.log_likelihood, logp) < TOL


def test_prompt_continuation_and_codebooks():
    model = tiny_lm(n_codebooks=2)
    prompt = torch.randint(0, 32, (1, 17, 2))  # length 17: not a multiple of the pooling product 6
    out = model.generate(2, 11, prompt=prompt, seed=0, progress=False, return_logits=True, prompt_chunk=5)
    assert out.tokens.shape == (2, 11, 2) and out.logits.shape == (2, 11, 2, 32)
    seq = torch.cat([prompt.expand(2, -1, -1), out.tokens[:, :-1]], dim=1)
    with torch.no_grad():
        forced, _ = model(seq)
    assert rel_err(out.logits, forced[:, 16:]) < TOL


def test_greedy_and_truncation():
    model = tiny_lm()
    greedy = model.generate(2, 12, temperature=0, progress=False)
    assert torch.equal(model.generate(2, 12, top_k=1, seed=5, progress=False), greedy)
    assert torch.equal(model.generate(2, 12, top_p=1e-6, seed=6, progress=False), greedy)


def _chi_square(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of the draws (n,) against the probabilities (V,) over the tokens with p > 0; draws of
    a token with p = 0 make it infinite."""
    counts = torch.bincount(draws, minlength=probs.numel()).double()
    expected = probs.double() * draws.numel()
    if (counts[expected == 0] > 0).any():
        return float("inf")
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_sampler_temperature_top_k_top_p():
    gen = torch.Generator().manual_seed(7)
    n, vocab = 20000, 12
    logits = torch.randn(n, vocab, generator=gen) * 2  # fresh logits per row
    noise = gumbel_noise_(torch.empty(n, vocab), gen)
    # top-k never draws outside the k largest logits; top-p never outside the nucleus (mass before a token < p)
    top3 = logits.topk(3, -1).indices
    assert (sample_from_logits(logits, noise, top_k=3)[:, None] == top3).any(-1).all()
    probs = logits.softmax(-1)
    drawn = sample_from_logits(logits, noise, top_p=0.6)
    before = (probs * (probs > probs.gather(-1, drawn[:, None]))).sum(-1)  # mass of the more likely tokens
    assert (before < 0.6).all()
    # temperature 0 is the argmax; a temperature near 0 too (the scaled gaps dwarf the noise)
    assert torch.equal(Sampler(0.0)(logits, noise), logits.argmax(-1))
    assert torch.equal(Sampler(1e-6)(logits[:500], noise[:500]), logits[:500].argmax(-1))
    # the draws follow softmax(logits / T), truncated and renormalised (chi-square, 11 or fewer degrees of freedom:
    # the 1e-6 quantile is below 45)
    row = logits[:1].expand(n, -1)
    for temperature, top_k, top_p in ((1.0, None, None), (0.5, None, None), (2.0, 4, None), (0.8, None, 0.7)):
        p = torch.softmax(row[0] / temperature, -1)
        if top_k is not None:
            p = p * (p >= p.topk(top_k).values[-1])
        if top_p is not None:
            ordered = p.sort(descending=True).values
            p = p * ((p * (p > p[:, None]).float()).sum(-1) < top_p)  # keep tokens with less mass before them
            assert p.sum() < ordered.sum()  # the nucleus is a strict subset here
        p = p / p.sum()
        draws = Sampler(temperature, top_k, top_p)(row, noise)
        assert _chi_square(draws, p) < 45, (temperature, top_k, top_p)
    # and they are not the softmax at another temperature
    assert _chi_square(Sampler(0.5)(row, noise), torch.softmax(row[0], -1)) > 200


def test_sampler_checks_its_settings():
    for kw, name in (({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"),
                     ({"top_p": 1.5}, "top_p")):
        with pytest.raises(ValueError, match=name):
            Sampler(**kw)
    assert Sampler(0).greedy and not Sampler(0.5).greedy
    assert Sampler(top_k=3).truncates and not Sampler(2.0).truncates


def test_likelihood_filter():
    ll = torch.tensor([-3.0, -1.0, -2.0, -5.0, -4.0, -0.5, -2.5, -1.5, -3.5, -4.5])
    kept = filter_by_likelihood(ll, 0.2, 0.1)
    assert kept.tolist() == [0, 1, 2, 4, 6, 7, 8]  # the 2 least likely and the most likely are dropped
    model = tiny_lm()
    out = model.generate(10, 8, seed=2, progress=False, likelihood_filter=(0.2, 0.2))
    full = model.generate(10, 8, seed=2, progress=False, return_log_likelihood=True)
    assert out.tokens.shape == (6, 8)
    assert torch.equal(out.tokens, full.tokens[out.kept])
    order = full.log_likelihood.argsort()
    assert set(out.kept.tolist()) == set(order[2:8].tolist())
    with pytest.raises(ValueError, match="likelihood_filter"):
        filter_by_likelihood(ll, 0.6, 0.5)


def test_period_program_equals_single_steps():
    """The CUDA path replays one graph per period of pool_product steps; eagerly it must equal single steps."""
    model = tiny_lm().eval()
    bb = model.backbone
    period = [bb.step_depth(i) for i in range(bb.pool_product)]

    def stepper():
        state = model.init_state(2)
        token = torch.full((2, 1, 1), 3, dtype=torch.long)
        gen = torch.Generator().manual_seed(0)
        s = _Stepper(model, state, token, 12, Sampler(1.0), gen, True, True, period)
        s.refill_noise()
        return s

    a, b = stepper(), stepper()
    with torch.no_grad():
        for _ in range(2):
            a.run("period")
        for t in range(12):
            b.run(bb.step_depth(t))
    assert torch.equal(a.out_tokens, b.out_tokens)
    assert torch.equal(a.out_logits, b.out_logits)


def test_generate_errors_and_decode():
    model = tiny_lm()
    with pytest.raises(ValueError, match="temperature"):
        model.generate(1, 4, temperature=-1, progress=False)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(2, 4, prompt=torch.zeros(3, 5, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="cuda_graphs"):
        model.generate(1, 4, cuda_graphs=True, progress=False)
    lm = build_model("sc09_small", **{k: v for k, v in TINY.items() if k != "vocab_size"})
    wave = tokens_to_waveform(lm.generate(2, 9, seed=0, progress=False), "mulaw")
    assert wave.shape == (2, 9) and wave.abs().max() <= 1.0
