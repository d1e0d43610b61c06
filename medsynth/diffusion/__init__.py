"""Gaussian diffusion (Improved DDPM) and its samplers, shared by the DDPM variants and SDM."""

from medsynth.diffusion.gaussian import (
    NOISE_SCHEDULES,
    PREDICTION_TYPES,
    GaussianDiffusion,
    TimestepMap,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    linear_betas,
    named_betas,
    normal_kl,
    space_timesteps,
)
from medsynth.diffusion.sampling import (
    DEFAULT_NUM_STEPS,
    SAMPLERS,
    ClassifierFreeGuidance,
    guided_output,
    sample,
)

__all__ = [
    "GaussianDiffusion",
    "TimestepMap",
    "discretized_gaussian_log_likelihood",
    "linear_betas",
    "cosine_betas",
    "named_betas",
    "NOISE_SCHEDULES",
    "PREDICTION_TYPES",
    "normal_kl",
    "space_timesteps",
    "DEFAULT_NUM_STEPS",
    "SAMPLERS",
    "ClassifierFreeGuidance",
    "guided_output",
    "sample",
]
