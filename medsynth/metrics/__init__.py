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
    InceptionFeatures,
    clean_resize,
    find_inception_weights,
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    psnr,
    psnr_per_image,
    ssim,
    ssim_per_image,
)
from medsynth.metrics.intensity import (
    background_mean,
    class_mean_painting,
    organ_intensity_error,
    region_means,
    region_sums,
)
from medsynth.metrics.volume import (
    adjacent_difference_ratio,
    adjacent_slice_difference,
    highpass_residual,
    median_drift,
    orthogonal_views,
    part_medians,
    texture_sticking,
)

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
    "dice_counts",
    "dice_from_counts",
    "dice_per_class",
    "VolumeGeometry",
    "reassemble_volume",
    "TotalSegmentatorScorer",
    "region_sums",
    "region_means",
    "background_mean",
    "organ_intensity_error",
    "class_mean_painting",
    "adjacent_slice_difference",
    "adjacent_difference_ratio",
    "highpass_residual",
    "texture_sticking",
    "part_medians",
    "median_drift",
    "orthogonal_views",
]
