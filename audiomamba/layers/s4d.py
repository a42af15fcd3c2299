"""S4D mixer: a linear time-invariant diagonal complex SSM (Gu et al., arXiv 2206.11893), S4D-Lin init, ZOH.

Whole sequences run as an FFT convolution with the SSM kernel; a carried state adds its free response
(computed in closed form), and the final state is a Vandermonde sum. Step-by-step continuation runs the
recurrence. Streaming chunks without gradients run as three matrix products and a complex product per mode, in
real arithmetic, with operators computed once per chunk length from the parameters (and again whenever a
parameter changes). All three are exact: they compute the same function up to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FFT_MIN_LENGTH = 64  # below this the recurrence is cheaper than the FFT path
# The matrix path keeps a (D, L, L) Toeplitz operator per chunk length: at most this many elements (16 MB in
# float32; D = 32 channels up to 362-sample chunks); longer chunks take the FFT path.
MATRIX_MAX_ELEMENTS = 1 << 22
# Operators are kept for the chunk lengths met first, up to this many Toeplitz elements in all (a stream's chunk,
# its tail, ...); lengths beyond it are computed at each call. Kept lengths are never dropped: compiled pushes
# read them.
MATRIX_CACHE_ELEMENTS = 4 * MATRIX_MAX_ELEMENTS


@dataclass
class S4DState:
    """Streaming state of an S4DMixer. ssm: (B, D, N/2, 2) float64, the complex state as (real, imag).

    The state is kept in double precision: the LTI recurrence has a memory of ~1/(Δ·|Re A|) steps (thousands
    at Δ = 1e-3), over which float32 rounding of a rotating complex state would exceed 1e-5 relative.
    """

    ssm: torch.Tensor


class S4DMixer(nn.Module):
    """LTI diagonal SSM per channel on (B, L, D): y = GLU(Linear(GELU(K * u + D ⊙ u))).

    Per channel d: h_t = exp(Δ A) h_{t-1} + (exp(Δ A) - 1) / A · u_t ;  y_t = 2 Re(C · h_t) + D u_t,
    with N/2 complex modes, A_n = -1/2 + iπn (S4D-Lin) and Δ log-uniform in [dt_min, dt_max].

    Args:
        d_model: D. d_state: N (N/2 complex modes; must be even). dropout: after the activation.
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dropout: float = 0.0):
        super().__init__()
        if d_state % 2:
            raise ValueError(f"d_state: expected an even number (N/2 complex modes), got {d_state}")
        self.d_model, self.d_state, self.n_modes = d_model, d_state, d_state // 2
        H, M = d_model, self.n_modes
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, M, dtype=torch.cfloat)))  # (D, N/2, 2)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, M)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(M, dtype=torch.float32).repeat(H, 1))
        self.D = nn.Parameter(torch.randn(H))
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(H, 2 * H)
        self._operators: dict[int, tuple[torch.Tensor, ...]] = {}  # chunk length → matrix-path operators
        self._operators_key: tuple = ()  # the parameters (storage, version) they were computed from

    def init_state(self, batch_size: int, device=None, dtype=None) -> S4DState:
        """Zero state: (B, D, N/2, 2) float64 (``dtype`` is accepted for the common signature; the SSM
        state is always float64)."""
        device = device if device is not None else self.D.device
        return S4DState(ssm=torch.zeros(batch_size, self.d_model, self.n_modes, 2, device=device,
                                        dtype=torch.float64))

    def _discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH discretisation: (ΔA, dA = exp(ΔA), dB = (dA - 1) / A), each (D, N/2) complex128.

        Double precision keeps the FFT path (which raises ΔA to powers l) and the recurrence (which
        multiplies by dA l times) equal far beyond float32 rounding for long sequences."""
        A = torch.complex(-torch.exp(self.log_A_real.double()), self.A_imag.double())  # (D, N/2)
        dtA = A * torch.exp(self.log_dt.double())[:, None]
        dA = torch.exp(dtA)
        return dtA, dA, (dA - 1.0) / A

    def ssm(self, u: torch.Tensor, h0: torch.Tensor | None, method: str = "auto", final_state: bool = True):
        """The linear SSM on channel-first input.

        Args:
            u: (B, D, L) float32. h0: (B, D, N/2) complex128 state or None.
            method: "fft", "recurrent" or "auto" (FFT from FFT_MIN_LENGTH samples on).
            final_state: compute h (else None: the FFT path skips its Vandermonde sum).
        Returns:
            y: (B, D, L) float32 (without the D skip), h: (B, D, N/2) complex128 final state or None.
        """
        if method not in ("auto", "fft", "recurrent"):
            raise ValueError(f"method: expected 'auto', 'fft' or 'recurrent', got {method!r}")
        batch, _, length = u.shape
        dtA, dA, dB = self._discrete()
        C = torch.view_as_complex(self.C).to(torch.cdouble)  # (D, N/2)
        zero_start = h0 is None
        if zero_start:
            h0 = torch.zeros(batch, self.d_model, self.n_modes, dtype=torch.cdouble, device=u.device)
        if method == "recurrent" or (method == "auto" and length < FFT_MIN_LENGTH):
            h, ys = h0, []
            u64 = u.double()
            for t in range(length):
                h = dA * h + dB * u64[:, :, t, None]  # (B, D, N/2)
                ys.append(2.0 * (C * h).sum(-1).real)  # (B, D)
            y = torch.stack(ys, dim=-1).float() if ys else u.new_zeros(u.shape)
            return y, h
        steps = torch.arange(length + 1, device=u.device, dtype=torch.float64)
        # (D, N/2, L+1): dA^0 … dA^L. The phase l·Im(ΔA) reaches hundreds of radians: form it in float64.
        powers = torch.exp(dtA[..., None] * steps).to(torch.cfloat)
        C, dB = C.to(torch.cfloat), dB.to(torch.cfloat)
        K = 2.0 * torch.einsum("dn,dnl->dl", C * dB, powers[..., :length]).real  # (D, L)
        n_fft = 2 * length
        y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(K, n=n_fft), n=n_fft)[..., :length]
        h0_32 = h0.to(torch.cfloat)
        if not zero_start:
            y = y + 2.0 * torch.einsum("dn,bdn,dnl->bdl", C, h0_32, powers[..., 1:]).real  # free response of h0
        if not final_state:
            return y, None
        # h_{L-1} = dA^L h0 + dB Σ_s dA^{L-1-s} u_s
        h = powers[..., length] * h0_32 + dB * torch.einsum("bdl,dnl->bdn", u.to(torch.cfloat),
                                                             powers[..., :length].flip(-1))
        return y, h.to(torch.cdouble)

    def matrix_operators(self, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The matrix path's operators for chunks of ``length`` samples, from the parameters, in real arithmetic.

        With the state as real pairs h (D, 2·N/2) (real and imaginary part of each mode, interleaved) and a chunk
        u (D, L) per channel, one chunk is
            y = T u + F h0       (the convolution with the SSM kernel K, plus the free response of h0)
            h = dA^L ⊙ h0 + G u  (the decay of h0, a complex product per mode, plus the Vandermonde sum of the inputs)
        Returns (T (D, L, L) float32, lower-triangular Toeplitz: T[i, j] = K[i - j]; F (D, L, N) float32;
        dA^L (D, N/2, 2, 1) float64, real and imaginary part; G (D, N, L) float32), N = d_state. The state
        itself stays float64 (its decay runs in float64); each chunk's inputs reach it through a float32 product.
        """
        H, M, L = self.d_model, self.n_modes, length
        a_re = -torch.exp(self.log_A_real.double())  # A = a_re + i a_im  (D, N/2)
        a_im = self.A_imag.double()
        dt = torch.exp(self.log_dt.double())[:, None]
        steps = torch.arange(L + 1, device=a_re.device, dtype=torch.float64)
        # dA^l = exp(l ΔA) for l = 0..L  (D, N/2, L+1); the phase l·Im(ΔA) reaches hundreds of radians: float64
        magnitude = torch.exp((a_re * dt)[..., None] * steps)
        phase = (a_im * dt)[..., None] * steps
        p_re, p_im = magnitude * torch.cos(phase), magnitude * torch.sin(phase)
        # dB = (dA - 1) / A
        e_re, e_im, norm = p_re[..., 1] - 1.0, p_im[..., 1], a_re * a_re + a_im * a_im
        b_re, b_im = (e_re * a_re + e_im * a_im) / norm, (e_im * a_re - e_re * a_im) / norm
        c_re, c_im = self.C[..., 0].double(), self.C[..., 1].double()
        cb_re, cb_im = c_re * b_re - c_im * b_im, c_re * b_im + c_im * b_re
        # kernel K[l] = 2 Re(C dB dA^l), l < L  (D, L), laid out as a causal Toeplitz matrix
        kernel = 2.0 * (cb_re[..., None] * p_re[..., :L] - cb_im[..., None] * p_im[..., :L]).sum(1)
        lag = torch.arange(L, device=a_re.device)
        lag = lag[:, None] - lag[None, :]  # (L, L) i - j
        toeplitz = torch.where(lag >= 0, kernel[:, lag.clamp(min=0)], 0.0).float()
        # free response y_l = 2 Re(C dA^(l+1) h0) = Σ_m f_re h_re - f_im h_im
        f_re = 2.0 * (c_re[..., None] * p_re[..., 1:] - c_im[..., None] * p_im[..., 1:])  # (D, N/2, L)
        f_im = 2.0 * (c_re[..., None] * p_im[..., 1:] + c_im[..., None] * p_re[..., 1:])
        free = torch.stack([f_re, -f_im], dim=2).reshape(H, 2 * M, L).transpose(1, 2).float().contiguous()
        # decay of h0 by dA^L: (D, N/2, 2, 1) the real and imaginary part per mode
        decay = torch.stack([p_re[..., L], p_im[..., L]], dim=-1)[..., None]
        # inputs into the final state: W_s = dB dA^(L-1-s)
        q_re, q_im = p_re[..., :L].flip(-1), p_im[..., :L].flip(-1)
        w_re = b_re[..., None] * q_re - b_im[..., None] * q_im
        w_im = b_re[..., None] * q_im + b_im[..., None] * q_re
        gain = torch.stack([w_re, w_im], dim=2).reshape(H, 2 * M, L).float()
        return toeplitz, free, decay, gain

    def _cached_operators(self, length: int) -> tuple[torch.Tensor, ...]:
        """``matrix_operators(length)``, kept per length and recomputed when a parameter changes (in place, e.g.
        an optimizer step or ``load_state_dict``, or by a move to another device; writes through ``.data`` bypass
        the version counter that this check reads, and are not seen).

        Inside a compiled graph the kept operators are read as graph inputs (``refresh_operators``, called before
        each compiled push, keeps them current); a length not kept is computed in the graph."""
        if torch.compiler.is_compiling():
            ops = self._operators.get(length)
            return ops if ops is not None else self.matrix_operators(length)
        self.refresh_operators()
        ops = self._operators.get(length)
        if ops is None:
            ops = self._fresh_operators(length)
            kept = sum(t[0].numel() for t in self._operators.values())
            if kept + ops[0].numel() <= MATRIX_CACHE_ELEMENTS:
                self._operators[length] = ops
        return ops

    def refresh_operators(self) -> None:
        """Recompute the kept operators (same lengths) if a parameter changed since they were computed."""
        key = tuple((p.data_ptr(), p._version) for p in (self.log_dt, self.C, self.log_A_real, self.A_imag))
        if key != self._operators_key:
            self._operators = {n: self._fresh_operators(n) for n in self._operators}
            self._operators_key = key

    def _fresh_operators(self, length: int) -> tuple[torch.Tensor, ...]:
        # plain tensors (not inference tensors, also under inference_mode): compiled graphs take them as inputs
        with torch.inference_mode(False), torch.no_grad():
            return self.matrix_operators(length)

    def matrix_fits(self, length: int) -> bool:
        """Whether "auto" runs chunks of ``length`` samples through the matrix path when no gradient is needed
        (its Toeplitz operator, D·L² elements, within ``MATRIX_MAX_ELEMENTS``)."""
        return self.d_model * length * length <= MATRIX_MAX_ELEMENTS

    def _use_matrix(self, method: str, length: int) -> bool:
        if method == "matrix":
            if torch.is_grad_enabled() and self.log_dt.requires_grad:
                raise ValueError("method='matrix' computes no gradients: call it under torch.no_grad()")
            return True
        # one eager step (generation) is cheaper as the recurrence, in the state's own layout; graphs (compiled or
        # exported) take the matrix path at every length, since it has no complex numbers
        return (method == "auto" and not torch.is_grad_enabled() and self.matrix_fits(length)
                and (length > 1 or torch.compiler.is_compiling()))

    def _matrix_chunk(self, x: torch.Tensor, h0: torch.Tensor | None, final_state: bool):
        """The matrix path: x (B, L, D), h0 (B, D, N/2, 2) float64 or None → y (B, L, D) float32 after the D skip
        and the GELU, h (B, D, N/2, 2) float64 or None."""
        batch, length, H = x.shape
        toeplitz, free, decay, gain = self._cached_operators(length)
        u = x.float().permute(2, 1, 0).contiguous()  # (D, L, B)
        y = torch.bmm(toeplitz, u)  # (D, L, B)
        if h0 is not None:
            h = h0.permute(1, 2, 3, 0)  # (D, N/2, 2, B)
            y = torch.baddbmm(y, free, h.reshape(H, 2 * self.n_modes, batch).float())
        y = F.gelu(y + self.D.float()[:, None, None] * u)
        h_new = None
        if final_state:
            h_new = torch.bmm(gain, u).double().reshape(H, self.n_modes, 2, batch)  # (D, N/2, 2, B)
            if h0 is not None:  # + dA^L h0, the complex product as real pairs
                d_re, d_im, h_re, h_im = decay[:, :, 0], decay[:, :, 1], h[:, :, 0], h[:, :, 1]
                h_new = h_new + torch.stack([d_re * h_re - d_im * h_im, d_re * h_im + d_im * h_re], dim=2)
            h_new = h_new.permute(3, 0, 1, 2).contiguous()
        return y.permute(2, 1, 0), h_new

    def forward(self, x: torch.Tensor, state: S4DState | None = None, method: str = "auto",
                return_state: bool = True):
        """x: (B, L, D) → y: (B, L, D), new state. ``state=None`` starts a stream. ``return_state=False``: None
        in place of the new state. ``method``: "fft", "recurrent", "matrix" (the chunk as matrix products with
        cached operators: no gradient to the SSM parameters), or "auto" (matrix without gradients up to
        ``MATRIX_MAX_ELEMENTS``, except single eager steps; else FFT from ``FFT_MIN_LENGTH`` samples on, else
        recurrent)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected (batch, length, {self.d_model}), got {tuple(x.shape)}")
        if self._use_matrix(method, x.shape[1]):
            y, h = self._matrix_chunk(x, None if state is None else state.ssm.double(), return_state)
            y = self.dropout(y).to(x.dtype)
        else:
            u = x.transpose(1, 2).float()  # (B, D, L)
            h0 = None if state is None else torch.view_as_complex(state.ssm.double().contiguous())
            y, h = self.ssm(u, h0, method, return_state)  # (B, D, L), (B, D, N/2) or None
            y = y + self.D.float()[:, None] * u
            y = self.dropout(F.gelu(y)).transpose(1, 2).to(x.dtype)  # (B, L, D)
            h = None if h is None else torch.view_as_real(h).contiguous()
        y = F.glu(self.out_proj(y), dim=-1)  # (B, L, D)
        return y, (S4DState(ssm=h) if return_state else None)
