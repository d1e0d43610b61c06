"""Metrics of Zhuang et al., Sec. 4: FID, PSNR, SSIM on slices and organ Dice (TotalSegmentator or
the in-domain :class:`medsynth.models.OrganSegmenter`); the paper-style report."""

from medsynth.metrics.dice import (
    TotalSegmentatorScorer,
    VolumeGeometry,
    dice_counts,
    dice_from_counts,
    dice_per_class,
    reassemble_volume,
)
from medsynth.metrics.image import (
    FrechetInceptionDistance,
    InceptionFeatures,
    clean_resize,
    find_inception_weights,
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    load_or_compute_real_statistics,
    psnr,
    psnr_per_image,
    ssim,
    ssim_per_image,
)
from medsynth.metrics.volume import adjacent_slice_difference

__all__ = [
    "psnr",
    "ssim",
    "psnr_per_image",
    "ssim_per_image",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "gaussian_statistics",
    "clean_resize",
    "find_inception_weights",
    "InceptionFeatures",
    "FrechetInceptionDistance",
    "load_or_compute_real_statistics",
    "dice_counts",
    "dice_from_counts",
    "dice_per_class",
    "VolumeGeometry",
    "reassemble_volume",
    "TotalSegmentatorScorer",
    "adjacent_slice_difference",
]
