"""Generation metrics on constructed inputs whose answers are known in closed form, and on fresh random inputs
against independent references (scipy's matrix square root, explicit loops over pairs)."""

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from audiomamba.config import load_experiment_config
from audiomamba.contract import AudioContract
from audiomamba.evaluation import (
    check_data_matches,
    classifier_outputs,
    evaluate_generation,
    nll_bits_per_sample,
    segment_nll_bits,
)
from audiomamba.metrics import (
    ClassifierOutputs,
    am_score,
    frechet_distance,
    generation_scores,
    inception_score,
    modified_inception_score,
)
from audiomamba.models import build_model
from audiomamba.tokenizers import build_tokenizer


def _random_probs(n, c, gen):
    return torch.softmax(3 * torch.randn(n, c, generator=gen, dtype=torch.float64), dim=1)


def _kl(p, q):
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))


@pytest.mark.parametrize("c", [2, 10, 35])
def test_inception_score_uniform_and_one_hot(c):
    assert inception_score(torch.full((50, c), 1.0 / c)) == pytest.approx(1.0, abs=1e-12)
    one_hot = torch.eye(c).repeat(3, 1)  # confident, evenly spread over the C classes
    assert inception_score(one_hot) == pytest.approx(c, rel=1e-9)
    assert inception_score(torch.eye(c)[[0] * 7]) == pytest.approx(1.0, abs=1e-12)  # confident, one class only


def test_inception_score_matches_loop():
    gen = torch.Generator().manual_seed(1)
    p = _random_probs(17, 6, gen)
    mean = p.mean(0).tolist()
    expected = math.exp(np.mean([_kl(row.tolist(), mean) for row in p]))
    assert inception_score(p) == pytest.approx(expected, rel=1e-10)


def test_modified_inception_score_two_distributions():
    p, q = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    probs = torch.stack([p, q, p, q])
    # pairs (p,p),(p,q),(q,p),(q,q) each with weight 1/4
    expected = math.exp((_kl(p.tolist(), q.tolist()) + _kl(q.tolist(), p.tolist())) / 4)
    assert modified_inception_score(probs) == pytest.approx(expected, rel=1e-12)
    assert modified_inception_score(torch.full((9, 4), 0.25)) == pytest.approx(1.0, abs=1e-12)


def test_modified_inception_score_matches_pair_loop():
    gen = torch.Generator().manual_seed(2)
    p = _random_probs(11, 5, gen)
    rows = [r.tolist() for r in p]
    expected = math.exp(np.mean([_kl(a, b) for a in rows for b in rows]))
    assert modified_inception_score(p) == pytest.approx(expected, rel=1e-10)


def test_am_score_known_values():
    c = 10
    balanced = torch.eye(c).repeat(4, 1)
    assert am_score(balanced, balanced) == pytest.approx(0.0, abs=1e-9)  # confident and balanced like real data
    uniform = torch.full((20, c), 1.0 / c, dtype=torch.float64)
    assert am_score(uniform, balanced) == pytest.approx(math.log(c), rel=1e-9)  # KL 0 + entropy log C
    # confident but always class 0: KL(uniform || one-hot) is -log(EPS) per missing class mass -> very large
    assert am_score(torch.eye(c)[[0] * 5], balanced) > 10


def test_am_score_matches_formula_random():
    gen = torch.Generator().manual_seed(3)
    p, r = _random_probs(13, 4, gen), _random_probs(21, 4, gen)
    ent = np.mean([-sum(x * math.log(x) for x in row.tolist()) for row in p])
    expected = _kl(r.mean(0).tolist(), p.mean(0).tolist()) + ent
    assert am_score(p, r) == pytest.approx(expected, rel=1e-10)


def test_fid_identical_sets_and_shift():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(200, 8, generator=gen, dtype=torch.float64) @ torch.randn(8, 8, generator=gen,
                                                                                 dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.randn(8, generator=gen, dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-8, abs=1e-8)


def test_fid_gaussians_population_formula():
    # independent large samples of N(0, diag(a)) and N(m, diag(b)): FID -> |m|² + Σ (sqrt a - sqrt b)²
    gen = torch.Generator().manual_seed(5)
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    xa = torch.randn(200_000, 3, generator=gen, dtype=torch.float64) * a.sqrt()
    xb = torch.randn(200_000, 3, generator=gen, dtype=torch.float64) * b.sqrt() + m
    expected = float(m.pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert frechet_distance(xa, xb) == pytest.approx(expected, rel=0.02)


def test_fid_matches_scipy_sqrtm():
    gen = torch.Generator().manual_seed(6)
    xa = torch.randn(64, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen,
                                                                                  dtype=torch.float64)
    xb = torch.randn(80, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen,
                                                                                  dtype=torch.float64) + 0.3
    a, b = xa.numpy(), xb.numpy()
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    expected = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))
    assert frechet_distance(xa, xb) == pytest.approx(expected, rel=1e-7)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="probs"):
        inception_score(torch.tensor([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="frechet_distance"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))


def _tiny_classifier(bidirectional):
    torch.manual_seed(0)
    return build_model("classifier_small", **{"backbone.d_model": 8, "backbone.n_blocks": [0, 1, 1],
                                              "backbone.bidirectional": bidirectional, "n_classes": 3})


@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_outputs_features_feed_the_head(bidirectional):
    clf = _tiny_classifier(bidirectional).eval()
    gen = torch.Generator().manual_seed(7)
    waves = [0.3 * torch.randn(n, generator=gen) for n in (200, 128, 256, 64)]
    out = classifier_outputs(clf, waves, batch_size=3)
    assert out.probs.shape == (4, 3) and out.features.shape == (4, 8)
    # the features are the head's input: its linear layer maps them to the same logits as classify() per clip
    logits = clf.head.linear(out.features.float()).double()
    assert torch.allclose(torch.softmax(logits, 1), out.probs, atol=1e-5)
    for i, w in enumerate(waves):
        alone = torch.softmax(clf.classify(w[None]).double(), 1)[0]
        assert torch.allclose(alone, out.probs[i], atol=1e-5)


def test_evaluate_generation_same_set():
    clf = _tiny_classifier(True).eval()
    gen = torch.Generator().manual_seed(8)
    waves = 0.3 * torch.randn(12, 192, generator=gen)
    labels = torch.randint(0, 3, (12,), generator=gen)
    res = evaluate_generation(clf, waves, waves, batch_size=5, reference_labels=labels)
    assert res["fid"] == pytest.approx(0.0, abs=1e-6)
    assert res["is"] == pytest.approx(res["reference_is"], rel=1e-9)
    with torch.no_grad():
        predicted = clf.classify(waves).argmax(-1)  # (12,): the classifier on the whole set at once
    assert res["class_histogram"] == [int((predicted == c).sum()) for c in range(3)]
    assert res["reference_accuracy"] == pytest.approx(float((predicted == labels).double().mean()), abs=1e-12)


def test_generation_scores_match_independent_computations():
    gen = torch.Generator().manual_seed(9)
    a = ClassifierOutputs(_random_probs(10, 3, gen), torch.randn(10, 4, dtype=torch.float64, generator=gen))
    b = ClassifierOutputs(_random_probs(14, 3, gen), torch.randn(14, 4, dtype=torch.float64, generator=gen) + 0.5)
    res = generation_scores(a, b)
    rows, ref_rows = [r.tolist() for r in a.probs], [r.tolist() for r in b.probs]
    mean, ref_mean = np.mean(rows, 0).tolist(), np.mean(ref_rows, 0).tolist()
    assert res["is"] == pytest.approx(math.exp(np.mean([_kl(r, mean) for r in rows])), rel=1e-10)
    assert res["mis"] == pytest.approx(math.exp(np.mean([_kl(r, s) for r in rows for s in rows])), rel=1e-10)
    entropy = np.mean([-sum(x * math.log(x) for x in r) for r in rows])
    assert res["am"] == pytest.approx(_kl(ref_mean, mean) + entropy, rel=1e-10)
    fa, fb = b.features.numpy(), a.features.numpy()  # FID of the generated features against the reference ones
    s_a, s_b = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    fid = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert res["fid"] == pytest.approx(float(fid), rel=1e-7)
    argmax = [max(range(3), key=r.__getitem__) for r in rows]
    assert res["class_histogram"] == [argmax.count(c) for c in range(3)]
    assert (res["n_generated"], res["n_reference"]) == (10, 14)


def test_nll_bits_per_sample_matches_manual():
    torch.manual_seed(0)
    lm = build_model("sc09_small", **{"backbone.d_model": 8, "backbone.n_blocks": [1],
                                      "backbone.mixer_options.mamba1.d_state": 4}).eval()
    gen = torch.Generator().manual_seed(10)
    tokens = torch.randint(0, 256, (3, 48), generator=gen)
    mask = torch.rand(3, 48, generator=gen) > 0.3
    res = nll_bits_per_sample(lm, [{"tokens": tokens[:2], "mask": mask[:2]}, {"tokens": tokens[2:], "mask": mask[2:]}])
    with torch.no_grad():
        logp = torch.log_softmax(lm(tokens)[0].double(), -1)  # (B, L, V)
    picked = logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    w = mask[:, 1:].double()
    expected = float(-(picked * w).sum() / w.sum() / math.log(2))
    assert res["bits_per_sample"] == pytest.approx(expected, rel=1e-5)
    assert res["n_samples"] == int(w.sum())
    # an untrained model is near-uniform: about 8 bits per 8-bit sample
    assert 7 < nll_bits_per_sample(lm, [tokens])["bits_per_sample"] < 9


def test_segment_nll_counts_every_real_sample_once(tmp_path):
    """Padding + masking a causal LM's batch gives exactly the per-segment NLL (no sample counted twice or
    left out), over files cut into data.length pieces."""
    import soundfile as sf

    gen = np.random.default_rng(11)
    for split, lengths in (("train", [300]), ("val", [250]), ("test", [700, 130, 64])):
        (tmp_path / split).mkdir()
        for i, n in enumerate(lengths):
            sf.write(str(tmp_path / split / f"c{i}.wav"), 0.2 * gen.standard_normal(n), 8000, subtype="PCM_16")
    cfg = load_experiment_config("music_mamba", [f"data.root={tmp_path}", "data.sample_rate=8000", "data.length=256",
                                                 "model.backbone.d_model=8", "model.backbone.n_blocks=[1]"])
    torch.manual_seed(0)
    lm = build_model(cfg.model, audio=AudioContract.from_experiment(cfg)).eval()
    res = segment_nll_bits(lm, cfg, "test", batch_size=3)
    assert res["n_segments"] == 3 + 1 + 1 and res["n_samples"] == 255 + 255 + 187 + 129 + 63
    tok = build_tokenizer("mulaw", 8)
    total, count = 0.0, 0
    for f in sorted((tmp_path / "test").glob("*.wav")):
        wave = torch.from_numpy(sf.read(str(f), dtype="float32")[0])
        for s in range(0, wave.shape[0], 256):
            piece = tok.encode(wave[s : s + 256])[None]
            r = nll_bits_per_sample(lm, [piece])
            total += r["bits_per_sample"] * r["n_samples"]
            count += r["n_samples"]
    assert res["bits_per_sample"] == pytest.approx(total / count, rel=1e-5)


def test_evaluation_refuses_data_unlike_the_models_contract():
    cfg = load_experiment_config("quickstart_lm", ["model.backbone.d_model=8", "model.backbone.n_blocks=[1]"])
    lm = build_model(cfg.model, audio=AudioContract.from_experiment(cfg))
    check_data_matches(lm, cfg)  # the data it was trained on
    with pytest.raises(ValueError, match="data.sample_rate=16000 but the model takes 8000 Hz audio"):
        check_data_matches(lm, load_experiment_config("quickstart_lm", ["data.sample_rate=16000"]))
    with pytest.raises(ValueError, match="data.tokenizer=linear with data.bits=8, but the model takes 8-bit mulaw"):
        check_data_matches(lm, load_experiment_config("quickstart_lm", ["data.tokenizer=linear"]))
    with pytest.raises(ValueError, match="no audio contract"):
        check_data_matches(build_model(cfg.model), cfg)
