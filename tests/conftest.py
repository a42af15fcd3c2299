"""Session-wide test setup.

Without CUDA, the Triton kernels are tested through Triton's interpreter. ``triton.jit`` reads TRITON_INTERPRET
when a kernel module is imported, and any test module may import one (directly or through the package), so the
variable is set here, before any test module is collected. The backend choice does not depend on it: CPU tensors
still take the PyTorch reference unless a test asks for Triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
