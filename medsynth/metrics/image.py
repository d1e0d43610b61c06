"""Image-quality metrics of Zhuang et al., Sec. 4 (FID, SSIM, PSNR) on CT slices in [0, 1].

PSNR and SSIM use torchmetrics' functional implementations with ``data_range=1`` and an 11x11
Gaussian window (sigma 1.5), averaged over images. FID follows clean-fid (Parmar et al., 2022):
slices are quantised to uint8, repeated to 3 channels, resized to 299x299 with clean-fid's
"clean" resizer (PIL bicubic on float channels) and embedded with the Inception-v3 torchscript
network ``inception-2015-12-05.pt``; the Fréchet distance between Gaussian fits is computed in
float64 with a symmetric (eigenvalue-based) matrix square root.

Everything works offline: the Inception file is looked up at ``fid_weights`` and in clean-fid's
own cache folder and never downloaded.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = [
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "psnr",
    "ssim",
    "psnr_per_image",
    "ssim_per_image",
    "gaussian_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "to_uint8",
    "clean_resize",
    "cleanfid_cache_dirs",
    "find_inception_weights",
    "InceptionFeatures",
]

INCEPTION_FILENAME = "inception-2015-12-05.pt"
#: Where clean-fid downloads the Inception torchscript file from (cleanfid/downloads_helper.py).
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
INCEPTION_DIM = 2048
CLEAN_SIZE = 299
_SSIM_PAD = 5  # half of the 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma)


def _as_images(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must have shape [B, 1, H, W], got {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {t.dtype}")
    return t


def _pair(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    p, t = _as_images(pred, "pred"), _as_images(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} must have the same shape")
    dtype = torch.promote_types(p.dtype, t.dtype)
    return p.to(dtype), t.to(device=p.device, dtype=dtype)


def psnr_per_image(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> Tensor:
    """PSNR of each image, ``[B]``, data range 1 (Zhuang et al., Sec. 4)."""
    p, t = _pair(pred, target)
    return peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim_per_image(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> Tensor:
    """SSIM of each image, ``[B]``: Gaussian window 11x11, sigma 1.5, data range 1.

    The mean runs over pixels whose window lies inside the image (a 5-pixel border is left out),
    as in scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``.
    """
    p, t = _pair(pred, target)
    if min(p.shape[-2:]) <= 2 * _SSIM_PAD:
        raise ValueError(
            f"SSIM needs images larger than {2 * _SSIM_PAD}x{2 * _SSIM_PAD}, got {tuple(p.shape)}"
        )
    _, full = structural_similarity_index_measure(
        p, t, gaussian_kernel=True, sigma=1.5, data_range=1.0, reduction="none", return_full_image=True
    )  # [B, 1, H, W]
    # torchmetrics averages over the reflect-padded border too; like Wang et al. and scikit-image,
    # average only where the 11x11 window lies inside the image.
    return full[..., _SSIM_PAD:-_SSIM_PAD, _SSIM_PAD:-_SSIM_PAD].mean(dim=(1, 2, 3))


def psnr(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> Tensor:
    """Mean over images of the per-image PSNR (dB); inputs ``[B, 1, H, W]`` in [0, 1]."""
    return psnr_per_image(pred, target).mean()


def ssim(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> Tensor:
    """Mean over images of the per-image SSIM; inputs ``[B, 1, H, W]`` in [0, 1]."""
    return ssim_per_image(pred, target).mean()


# ----------------------------------------------------------------------------- Fréchet distance


def gaussian_statistics(feats: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``."""
    f = np.asarray(torch.as_tensor(feats).detach().cpu().double().numpy())
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape [N >= 2, D], got {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_statistics(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b), float64.

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})`` where the trace of the square
    root is computed as the sum of square roots of the eigenvalues of the symmetric matrix
    ``S_a^{1/2} S_b S_a^{1/2}`` (same spectrum as ``S_a S_b``), which avoids the complex
    round-off of a general ``sqrtm``.
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = (
        np.atleast_2d(np.asarray(sigma_a, np.float64)),
        np.atleast_2d(np.asarray(sigma_b, np.float64)),
    )
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != (mu_a.size,) * 2:
        raise ValueError(
            f"statistics do not match: mu {mu_a.shape} / {mu_b.shape}, sigma {sigma_a.shape} / {sigma_b.shape}"
        )
    root_a = _sqrt_psd(sigma_a)
    inner = root_a @ sigma_b @ root_a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_covmean)


def frechet_distance(feats_a: Tensor | np.ndarray, feats_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets ``[N, D]`` (float64)."""
    return frechet_distance_from_statistics(*gaussian_statistics(feats_a), *gaussian_statistics(feats_b))


# ----------------------------------------------------------------------------- clean-fid pipeline


def to_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """``[B, 1, H, W]`` float in [0, 1] -> ``[B, H, W]`` uint8 (round to nearest, as an 8-bit PNG)."""
    t = _as_images(images, "images").detach().float().cpu()
    return (t[:, 0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def clean_resize(images: Tensor | np.ndarray) -> Tensor:
    """clean-fid's input pipeline for grayscale slices.

    ``[B, 1, H, W]`` in [0, 1] -> uint8 -> HWC with the gray channel repeated to RGB -> clean-fid's
    "clean" resizer (PIL bicubic per float channel to 299x299, clipped to [0, 255]).

    Returns:
        float32 ``[B, 3, 299, 299]`` with values in [0, 255], what clean-fid feeds its Inception.
    """
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    out = []
    for img in to_uint8(images):  # [H, W] uint8
        hwc = np.repeat(img[:, :, None], 3, axis=2)  # [H, W, 3]
        out.append(torch.from_numpy(np.ascontiguousarray(resize(hwc).transpose(2, 0, 1))))  # [3, 299, 299]
    return torch.stack(out).float()


def cleanfid_cache_dirs() -> list[Path]:
    """Folders where clean-fid itself looks for / caches ``inception-2015-12-05.pt``.

    clean-fid 0.1.35 hard-codes ``/tmp`` (``./`` on Windows) in ``cleanfid.features``; the
    system temp folder is added in case it differs.
    """
    dirs = [Path("./") if platform.system() == "Windows" else Path("/tmp"), Path(tempfile.gettempdir())]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_inception_weights(fid_weights: str | os.PathLike | None = None) -> Path:
    """Locate clean-fid's Inception torchscript file without downloading it.

    Args:
        fid_weights: The ``.pt`` file, or a folder holding ``inception-2015-12-05.pt``. When None,
            clean-fid's cache folders (:func:`cleanfid_cache_dirs`) are searched.

    Raises:
        FileNotFoundError: naming every path tried and the download URL.
    """
    if fid_weights is not None:
        p = Path(fid_weights).expanduser()
        candidates = [p / INCEPTION_FILENAME] if p.is_dir() else [p]
    else:
        candidates = [d / INCEPTION_FILENAME for d in cleanfid_cache_dirs()]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"FID needs clean-fid's Inception weights and none were found (looked for: {tried}). "
        f"This machine may be offline, so nothing is downloaded: fetch {INCEPTION_URL} elsewhere and "
        f"either pass its path as fid_weights=... or copy it to {cleanfid_cache_dirs()[0] / INCEPTION_FILENAME}."
    )


class InceptionFeatures(torch.nn.Module):
    """clean-fid's Inception-v3 feature extractor (2048-d pool features), loaded offline.

    Takes ``[B, 1, H, W]`` slices in [0, 1] and applies :func:`clean_resize` itself.

    Args:
        fid_weights: Path to ``inception-2015-12-05.pt`` (or its folder); None searches clean-fid's cache.
        device: Where the network runs.
        network: Replaces the Inception network (``[B, 3, 299, 299]`` in [0, 255] -> ``[B, D]``)
            while keeping clean-fid's preprocessing; tests use a small network here.
        feature_id: Identity of ``network`` for caches (None: real statistics are not cached on disk).
    """

    def __init__(
        self,
        fid_weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        network: torch.nn.Module | Callable[[Tensor], Tensor] | None = None,
        feature_id: str | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.empty(0, device=device), persistent=False)  # follows .to()
        if network is not None:
            self.net = network
            self.path = None
            self.feature_id = feature_id
            return
        from cleanfid.inception_torchscript import InceptionV3W

        path = find_inception_weights(fid_weights)
        if path.name != INCEPTION_FILENAME:  # InceptionV3W takes a folder and a fixed file name
            raise ValueError(
                f"fid_weights file must be named {INCEPTION_FILENAME} (clean-fid loads it by that name), got {path}"
            )
        self.net = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
        self.path = path
        self.feature_id = feature_id or "cleanfid-clean-inception-2015-12-05"

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = clean_resize(images).to(self._anchor.device)  # [B, 3, 299, 299] in [0, 255]
        feats = self.net(x)
        return feats.reshape(feats.shape[0], -1)  # [B, D]
