"""Top-k singular triplets of float32 (…, m, n) stacks: randomized subspace iteration and exact SVD."""

from __future__ import annotations

import torch

# Randomized SVD settings; `randomized_svd` documents how they were chosen.
OVERSAMPLE = 32
POWER_ITERATIONS = 4


def gaussian_sketch(n: int, width: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """n × width standard normal test matrix, drawn on the CPU so CPU and CUDA runs use the same one."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=generator).to(device)


def randomized_svd(
    a: torch.Tensor,
    rank: int,
    oversample: int = OVERSAMPLE,
    power_iterations: int = POWER_ITERATIONS,
    sketch: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` SVD of a float32 (…, m, n) stack by randomized subspace iteration (Halko et al. 2011).

    Q = qr(A Ω) with Ω an n × l Gaussian sketch, l = min(rank + oversample, m, n); then `power_iterations`
    times Z = qr(Aᵀ Q), Q = qr(A Z); finally Aᵀ Q = Z R and A ≈ Q Rᵀ Zᵀ, so the SVD of the l × l matrix
    Rᵀ = Û S V̂ᵀ gives U = Q Û, V = Z V̂. The stack shares Ω (`sketch`, default `gaussian_sketch(n, l,
    seed)`). Nothing larger than (m + n)·l per matrix is formed; A is read 2·power_iterations + 2 times.
    Returns U (…, m, rank), S (…, rank) descending, V (…, n, rank).

    Defaults p = 32, q = 4 (OVERSAMPLE, POWER_ITERATIONS): on decaying spectra the leading σ_i are
    float32-exact, σ_64 within ~1%, ρ_k within 1%; angles between top-k subspaces are sensitive where
    σ_k ≈ σ_{k+1}: use exact SVD for precise angles. The accuracy table behind these settings is in
    bench/README.md ("Randomized SVD settings").
    """
    q, z, r = _subspace_iteration(a, rank, oversample, power_iterations, sketch, seed)
    # The l × l SVD is latency-bound on a GPU (hundreds of small kernels): LAPACK on the host is faster.
    u_small, s, vh_small = (x.to(a.device) for x in torch.linalg.svd(r.mT.cpu()))
    return (q @ u_small[..., :rank]), s[..., :rank], (z @ vh_small[..., :rank, :].mT)


def randomized_singular_values(
    a: torch.Tensor,
    rank: int,
    oversample: int = OVERSAMPLE,
    power_iterations: int = POWER_ITERATIONS,
    sketch: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """S of `randomized_svd` (same arguments, same numbers) without forming singular vectors."""
    _, _, r = _subspace_iteration(a, rank, oversample, power_iterations, sketch, seed)
    return torch.linalg.svdvals(r.cpu())[..., :rank].to(a.device)


def _subspace_iteration(a, rank, oversample, power_iterations, sketch, seed):
    """Orthonormal Q (…, m, l), Z (…, n, l) and R (…, l, l) with Aᵀ Q = Z R, so A ≈ Q Rᵀ Zᵀ."""
    m, n = a.shape[-2:]
    if sketch is None:
        sketch = gaussian_sketch(n, min(rank + oversample, m, n), seed, a.device)
    q, _ = torch.linalg.qr(a @ sketch)
    for _ in range(power_iterations):
        z, _ = torch.linalg.qr(a.mT @ q)
        q, _ = torch.linalg.qr(a @ z)
    z, r = torch.linalg.qr(a.mT @ q)
    return q, z, r


def exact_svd(a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` U, S, V of torch.linalg.svd, shaped like `randomized_svd`'s."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u[..., :rank], s[..., :rank], vh[..., :rank, :].mT
