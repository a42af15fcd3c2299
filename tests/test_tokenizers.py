"""Tokenizers: exact decode of waveform quantizers, exact reversal of codec patterns, the EnCodec adapter."""

from __future__ import annotations

import math

import pytest
import torch

from audiomamba.tokenizers import PATTERNS, CodebookPattern, LinearTokenizer, MuLawTokenizer, build_tokenizer


def _mulaw_ref(x: torch.Tensor, V: int) -> torch.Tensor:
    """Textbook mu-law (ITU G.711 style companding, mu = V - 1) in float64, rounded to the nearest code."""
    mu = V - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((y + 1) / 2 * mu + 0.5).long()


@pytest.mark.parametrize("bits", [4, 8, 10])
def test_mulaw_codes_round_trip_exactly_and_match_formula(bits):
    tok = MuLawTokenizer(bits)
    codes = torch.arange(tok.vocab_size)
    assert torch.equal(tok.encode(tok.decode(codes)), codes)
    x = torch.rand(4, 1000, dtype=torch.float64) * 2 - 1
    got = tok.encode(x.float())
    ref = _mulaw_ref(x.float().double(), tok.vocab_size)
    assert (got - ref).abs().max() <= 1  # float32 rounding at code boundaries may differ by one code
    assert (got == ref).float().mean() > 0.99
    assert got.min() >= 0 and got.max() < tok.vocab_size


@pytest.mark.parametrize("bits", [2, 8, 12])
def test_linear_exact_and_within_half_step(bits):
    tok = LinearTokenizer(bits)
    codes = torch.randint(0, tok.vocab_size, (3, 500))
    assert torch.equal(tok.encode(tok.decode(codes)), codes)
    x = torch.rand(3, 500) * 2 - 1
    step = 2 / (tok.vocab_size - 1)
    assert (tok.decode(tok.encode(x)) - x).abs().max() <= step / 2 + 1e-6
    assert tok.encode(torch.tensor([-5.0, 5.0])).tolist() == [0, tok.vocab_size - 1]  # clipped


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="bits"):
        MuLawTokenizer(1)
    with pytest.raises(TypeError, match="float"):
        LinearTokenizer().encode(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        MuLawTokenizer().decode(torch.tensor([256]))
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        build_tokenizer("alaw")


def _interleave_ref(kind, codes, special):
    """Position-by-position definition of each pattern (loops; obviously correct)."""
    B, K, T = codes.shape
    if kind == "parallel":
        return codes.clone()
    if kind == "flatten":
        out = torch.empty(B, 1, K * T, dtype=torch.long)
        for t in range(T):
            for k in range(K):
                out[:, 0, t * K + k] = codes[:, k, t]
        return out
    out = torch.full((B, K, T + K - 1), special, dtype=torch.long)
    for k in range(K):
        for t in range(T):
            out[:, k, t + k] = codes[:, k, t]
    return out


@pytest.mark.parametrize("kind", PATTERNS)
@pytest.mark.parametrize("K,T", [(1, 5), (4, 7), (8, 1), (3, 0)])
def test_codebook_patterns_match_definition_and_reverse(kind, K, T):
    V = 1024
    codes = torch.randint(0, V, (2, K, T))
    pat = CodebookPattern(kind, K, special_token=V)
    seq, mask = pat.interleave(codes)
    assert torch.equal(seq, _interleave_ref(kind, codes, V))
    assert seq.shape == (2, pat.n_streams, pat.seq_len(T)) and mask.shape == seq.shape[1:]
    assert torch.equal(mask, seq[0] != V)  # codes are < V, so the filler marks exactly the invalid positions
    assert int(mask.sum()) == K * T  # every code appears exactly once among the valid positions
    assert torch.equal(pat.deinterleave(seq), codes)


def test_codebook_pattern_errors():
    pat = CodebookPattern("flatten", 4, special_token=0)
    with pytest.raises(ValueError, match="multiple of K=4"):
        pat.deinterleave(torch.zeros(1, 1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="K=4"):
        pat.interleave(torch.zeros(1, 3, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="pattern kind"):
        CodebookPattern("zigzag", 4, 0)


def test_encodec_adapter_offline(tmp_path, monkeypatch):
    pytest.importorskip("encodec")
    from audiomamba.tokenizers import EncodecTokenizer

    def no_download(*args, **kwargs):
        raise AssertionError("the adapter must never download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(0)
    tok = EncodecTokenizer(bandwidth=3.0, pretrained=False)
    assert tok.n_codebooks == 4 and tok.vocab_size == 1024 and tok.sample_rate == 24000
    wave = torch.randn(2, 8000) * 0.1
    codes = tok.encode(wave, sample_rate=8000)  # resampled to 24 kHz: 24000 samples -> 75 frames
    assert codes.shape == (2, 4, 75) and codes.dtype == torch.long
    out = tok.decode(codes)
    assert out.shape == (2, 75 * 320) and torch.isfinite(out).all()

    # no weights in the (empty) hub cache: a clear error, no download
    with pytest.raises(FileNotFoundError, match="never downloads"):
        EncodecTokenizer(pretrained=True)
    # weights from a local file (and from the hub cache) load exactly
    ckpt = tmp_path / "weights.th"
    with torch.no_grad():
        for p in tok.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    torch.save(tok.model.state_dict(), ckpt)
    for kwargs in ({"checkpoint": ckpt}, {}):
        if not kwargs:
            cache = tmp_path / "torch_home" / "hub" / "checkpoints"
            cache.mkdir(parents=True)
            (cache / "encodec_24khz-d7cc33bc.th").write_bytes(ckpt.read_bytes())
        loaded = EncodecTokenizer(bandwidth=3.0, pretrained=True, **kwargs)
        for (name, a), b in zip(tok.model.state_dict().items(), loaded.model.state_dict().values()):
            assert torch.equal(a, b), name
