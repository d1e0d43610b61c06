"""Metrics of Zhuang et al., Sec. 4: FID, PSNR, SSIM on slices and organ Dice (TotalSegmentator or
the in-domain :class:`medsynth.models.OrganSegmenter`); the paper-style report. Beyond the paper:
the Fréchet Radiomics Distance (offline), a memorization check and organ statistics in HU."""

from medsynth.metrics.dice import (
    TotalSegmentatorScorer,
    VolumeGeometry,
    dice_counts,
    dice_from_counts,
    dice_per_class,
    reassemble_volume,
)
from medsynth.metrics.frd import check_frd_available, frd, frd_from_features, radiomics_features
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
    compare_hu_statistics,
    histogram_quantiles,
    hu_bins,
    hu_histogram,
    organ_hu_statistics,
    organ_intensity_error,
    region_means,
    region_sums,
)
from medsynth.metrics.memorization import (
    NearestNeighbors,
    memorization_summary,
    nearest_neighbors,
    pixel_vectors,
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
    "hu_bins",
    "hu_histogram",
    "histogram_quantiles",
    "organ_hu_statistics",
    "compare_hu_statistics",
    "frd",
    "frd_from_features",
    "radiomics_features",
    "check_frd_available",
    "NearestNeighbors",
    "nearest_neighbors",
    "pixel_vectors",
    "memorization_summary",
    "adjacent_slice_difference",
]
