"""AudioLM / AudioClassifier: presets, config loading and errors, chunked == full, save/load round trips."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import random_chunks, rel_err

import audiomamba
from audiomamba import AudioClassifier, AudioLM, build_model, load_model
from audiomamba.config import load_experiment_config, load_model_config, model_preset_names
from audiomamba.contract import METADATA_KEY, AudioContract, TokenizerSpec

torch.set_num_threads(1)

TOL = 1e-5
TINY = {
    "backbone.d_model": 8,
    "backbone.n_blocks": [1],
    "backbone.mixer_options": {"mamba1": {"d_state": 4}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
                               "s4d": {"d_state": 8}},
}
PRESETS = ["sc09_small", "sc09_small_n16", "sc09_large", "sc09_mixed", "sc09_s4d", "sc09_mamba2",
           "classifier_small", "classifier_bidirectional"]


def tiny(spec, **overrides):
    torch.manual_seed(0)
    return build_model(spec, **{**TINY, **overrides})


def test_all_presets_are_shipped():
    assert set(PRESETS) <= set(model_preset_names())


@pytest.mark.parametrize("name,expected", [("sc09_small", 6.1e6), ("sc09_small_n16", 5.06e6), ("sc09_large", 24.4e6),
                                                   ("sc09_mamba2", 6.2e6)])
def test_paper_sized_presets_parameter_counts(name, expected):
    with torch.device("meta"):  # counts only: nothing is allocated or run
        model = build_model(name)
    assert abs(model.num_parameters() - expected) / expected < 0.02


def test_preset_contents():
    small = load_model_config("sc09_small")
    assert small.backbone.d_model == 64 and small.backbone.pool == [4, 4]
    assert small.backbone.stage_blocks() == [8, 8, 8] and small.backbone.stage_mixers() == ["mamba1"] * 3
    assert load_model_config("sc09_mixed").backbone.stage_mixers() == ["s4d", "mamba1", "mamba1"]
    assert load_model_config("sc09_s4d").backbone.stage_mixers() == ["s4d"] * 3
    assert load_model_config("sc09_large").backbone.d_model == 96
    assert not load_model_config("classifier_small").backbone.bidirectional
    assert load_model_config("classifier_bidirectional").backbone.bidirectional
    with torch.device("meta"):
        assert 0.8e6 < build_model("classifier_small").num_parameters() < 1.5e6


@pytest.mark.parametrize("name", model_preset_names())  # every shipped preset, also ones added later
def test_save_load_round_trip(name, tmp_path):
    model = tiny(name).eval()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    K = model.config.n_codebooks
    if isinstance(model, AudioLM) or model.config.input == "tokens":
        x = torch.randint(0, model.config.vocab_size, (2, 19) if K == 1 else (2, 19, K))
    else:
        x = torch.randn(2, 150)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_save_load_keeps_dtype(tmp_path):
    model = tiny("sc09_small").to(torch.bfloat16)
    model.save(tmp_path)
    loaded = load_model(tmp_path)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))


CONTRACTS = {  # one audio contract per kind of model input, each with non-default values
    "lm_mulaw": ("sc09_small", {}, AudioContract(16000, "tokens", TokenizerSpec("mulaw", bits=8), length=8000,
                                                 loudness_db=-18.0)),
    "lm_linear6": ("sc09_small", {"vocab_size": 64}, AudioContract(11025, "tokens", TokenizerSpec("linear", bits=6))),
    "lm_codec": ("sc09_small", {"vocab_size": 9, "n_codebooks": 3},
                 AudioContract(24000, "tokens", TokenizerSpec("codec", n_codebooks=3, pattern="delay",
                                                              codebook_size=8))),
    "classifier_wave": ("classifier_small", {"n_classes": 3},
                        AudioContract(8000, "waveform", labels=("yes", "no", "up"), length=4096, trim_db=30.0)),
    "classifier_tokens": ("classifier_bidirectional", {"input": "tokens", "n_classes": 2},
                          AudioContract(22050, "tokens", TokenizerSpec("mulaw", bits=8), labels=("cat", "dog"))),
}


@pytest.mark.parametrize("case", sorted(CONTRACTS))
def test_save_load_keeps_the_audio_contract(case, tmp_path):
    spec, overrides, audio = CONTRACTS[case]
    model = tiny(spec, **overrides)
    model.audio = audio
    model.save(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.audio == audio and loaded.labels == audio.labels
    assert isinstance(loaded.audio.tokenizer, (TokenizerSpec, type(None)))
    if audio.tokenizer is not None:
        assert (loaded.audio.tokenizer.kind, loaded.audio.tokenizer.bits) == (audio.tokenizer.kind,
                                                                              audio.tokenizer.bits)
    # stored as JSON in the weights file's metadata (read without unpickling)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        stored = json.loads(f.metadata()[METADATA_KEY])
    assert stored["sample_rate"] == audio.sample_rate and stored["input"] == audio.input
    assert stored["labels"] == list(audio.labels)


def test_contract_from_experiment_and_training_tokenizer():
    cfg = load_experiment_config("quickstart_classifier", ["data.bits=6", "model.vocab_size=64",
                                                           "data.tokenizer=linear", "data.loudness_db=-20"])
    audio = AudioContract.from_experiment(cfg, labels=cfg.data.synthetic.classes)
    assert audio == AudioContract(cfg.data.sample_rate, "tokens", TokenizerSpec("linear", bits=6),
                                  labels=tuple(cfg.data.synthetic.classes), length=cfg.data.length,
                                  loudness_db=-20.0)
    x = torch.rand(2, 50) * 2 - 1
    assert torch.equal(audio.tokenizer.build().encode(x), torch.round((x.double() + 1) * 31.5).long())
    lm = load_experiment_config("quickstart_lm")
    assert AudioContract.from_experiment(lm, labels=["a", "b"]).labels == ()  # a language model has no labels


def test_contract_must_fit_the_model():
    with pytest.raises(ValueError, match="makes 64 tokens, the model's vocabulary has 256"):
        tiny("sc09_small").audio = AudioContract(8000, "tokens", TokenizerSpec("linear", bits=6))
    with pytest.raises(ValueError, match="2 labels for a classifier of 10 classes"):
        build_model("classifier_small", audio=AudioContract(8000, "waveform", labels=("a", "b")),
                    **TINY)
    with pytest.raises(ValueError, match="input 'tokens' does not fit a model that takes waveform"):
        tiny("classifier_small").audio = AudioContract(8000, "tokens", TokenizerSpec("mulaw", bits=8))
    with pytest.raises(ValueError, match="a waveform-input model has no tokenizer"):
        AudioContract(8000, "waveform", TokenizerSpec("mulaw", bits=8))
    with pytest.raises(ValueError, match="sample_rate"):
        AudioContract(0, "waveform")
    with pytest.raises(ValueError, match="unsupported version 7"):
        AudioContract.from_json('{"version": 7, "sample_rate": 8000, "input": "waveform"}')


def test_model_without_contract_and_legacy_directories(tmp_path):
    model = tiny("classifier_small", n_classes=3)
    assert model.audio is None and model.labels == ()
    model.save(tmp_path / "bare")
    assert load_model(tmp_path / "bare").audio is None  # saved without one: none is made up
    # a directory written before contracts existed: training left task.json beside the weights
    model.save(tmp_path / "old")
    (tmp_path / "old" / "task.json").write_text(json.dumps(
        {"task": "classify", "sample_rate": 8000, "tokenizer": "none", "bits": 8, "length": 512,
         "classes": ["x", "y", "z"]}))
    assert load_model(tmp_path / "old").audio == AudioContract(8000, "waveform", labels=("x", "y", "z"),
                                                               length=512)


def test_load_model_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_model(tmp_path)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="backbone.d_modle"):
        build_model("sc09_small", **{"backbone.d_modle": 32})
    with pytest.raises(ValueError, match="vocab_sise"):
        load_model_config({"kind": "lm", "vocab_sise": 3})
    with pytest.raises(ValueError, match="unknown model preset 'sc09_smal'"):
        build_model("sc09_smal")
    with pytest.raises(ValueError, match="d_sate"):
        build_model("sc09_small", **{"backbone.mixer_options": {"mamba1": {"d_sate": 4}}})
    with pytest.raises(ValueError, match="causal backbone"):
        load_model_config("sc09_small", {"backbone.bidirectional": True})
    with pytest.raises(ValueError, match="backbone.d_model"):
        load_model_config("sc09_small", ["backbone.d_model=abc"])
    with pytest.raises(FileNotFoundError):
        build_model(tmp_path / "nope.yaml")


def test_overrides_and_sources(tmp_path):
    cfg = load_model_config("sc09_small", ["backbone.d_model=32", "backbone.mixer=s4d", "backbone.pool=[2,2,2]"])
    assert cfg.backbone.d_model == 32 and cfg.backbone.stage_mixers() == ["s4d"] * 4
    path = tmp_path / "m.yaml"
    path.write_text("kind: classifier\ninput: waveform\nn_classes: 3\nbackbone:\n  d_model: 8\n  n_blocks: 1\n")
    model = build_model(str(path), **{"backbone.mixer_options": TINY["backbone.mixer_options"]})
    assert isinstance(model, AudioClassifier) and model.config.n_classes == 3
    assert isinstance(build_model(model.config), AudioClassifier)
    assert audiomamba.build_model is build_model


def run_chunks(model, x, sizes):
    ys, state, start = [], None, 0
    for n in sizes:
        y, state = model(x[:, start : start + n], state)
        ys.append(y)
        start += n
    return torch.cat(ys, dim=1)


@pytest.mark.parametrize("name", ["sc09_small", "sc09_mixed", "sc09_s4d"])
def test_lm_chunks_equal_full(name):
    model = tiny(name, **{"backbone.pool": [2, 3]})
    x = torch.randint(0, 256, (2, 31))
    with torch.no_grad():
        full, _ = model(x)
        assert full.shape == (2, 31, 256)
        chunked = run_chunks(model, x, random_chunks(31, random.Random(0), max_chunk=9))
    assert rel_err(chunked, full) < TOL


def test_lm_with_codebooks_and_mamba2():
    model = tiny("sc09_small", n_codebooks=3, vocab_size=17, **{"backbone.mixer": "mamba2"})
    x = torch.randint(0, 17, (2, 23, 3))
    with torch.no_grad():
        full, _ = model(x)
        assert full.shape == (2, 23, 3, 17)
        chunked = run_chunks(model, x, random_chunks(23, random.Random(1), max_chunk=7))
    assert rel_err(chunked, full) < TOL
    with pytest.raises(ValueError, match=r"values must lie in \[0, 17\)"):
        model(torch.full((1, 4, 3), 17))
    with pytest.raises(ValueError, match="tokens: expected"):
        model(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("codebooks", [1, 3])
def test_token_embedding_sums_one_row_per_codebook(codebooks):
    from audiomamba.models import TokenEmbedding

    torch.manual_seed(codebooks)
    emb = TokenEmbedding(vocab_size=11, n_codebooks=codebooks, d_model=5)
    tokens = torch.randint(0, 11, (2, 7, codebooks))
    table = emb.embedding.weight.detach()
    want = sum(table[tokens[..., k] + 11 * k] for k in range(codebooks))  # codebook k's table starts at k V
    assert torch.equal(emb(tokens), want)


def test_lm_is_causal():
    model = tiny("sc09_small", **{"backbone.pool": [2, 2]})
    emb = model.embed.embedding
    x = torch.randint(0, 256, (1, 12))
    h = emb(x).detach().requires_grad_(True)
    y, _ = model.backbone(h)
    logits = model.head(y)
    (grad,) = torch.autograd.grad(logits[0, 5, 0].logsumexp(-1), h)
    assert grad[0, :6].abs().max() > 0 and grad[0, 6:].abs().max() <= 1e-9 * grad.abs().max()


def test_causal_classifier_running_prediction():
    model = tiny("classifier_small", **{"backbone.pool": [2, 4]})
    x = torch.randn(3, 45)
    with torch.no_grad():
        full, state = model(x)
        assert full.shape == (3, 45, 10)
        chunked = run_chunks(model, x, random_chunks(45, random.Random(2), max_chunk=11))
        assert rel_err(chunked, full) < TOL
        assert rel_err(model.classify(x), full[:, -1]) < TOL
        lengths = torch.tensor([45, 20, 7])
        picked = model.classify(x, lengths)
        for i, n in enumerate(lengths.tolist()):  # a padded row's prediction is its prefix's prediction
            assert rel_err(picked[i], model(x[i : i + 1, :n])[0][0, -1]) < TOL
    with pytest.raises(ValueError, match="float waveform"):
        model(torch.randint(0, 3, (1, 8)))


def test_classifier_last_pooling_and_tokens():
    model = tiny("classifier_small", input="tokens", pooling="last", vocab_size=16)
    x = torch.randint(0, 16, (2, 70))
    with torch.no_grad():
        full, _ = model(x)
        chunked = run_chunks(model, x, [1, 33, 36])
    assert rel_err(chunked, full) < TOL


def test_bidirectional_classifier():
    model = tiny("classifier_bidirectional")
    x = torch.randn(2, 100)
    with torch.no_grad():
        logits, state = model(x)
        assert logits.shape == (2, 10) and state is None
        masked = model.classify(torch.cat([x, torch.zeros(2, 28)], 1), torch.tensor([100, 100]))
        assert masked.shape == (2, 10)
    with pytest.raises(ValueError, match="no streaming state"):
        model.init_state(1)
