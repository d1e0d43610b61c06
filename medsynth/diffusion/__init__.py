"""The processes of the diffusion methods and their samplers: Gaussian diffusion (Improved DDPM, the
paper's) and rectified flow, shared by the DDPM variants and SDM."""

from medsynth.diffusion.flow import FLOW_SAMPLERS, TIMESTEP_SAMPLING, RectifiedFlow, heun_schedule, shift_time
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
from medsynth.diffusion.process import PROCESSES, build_process
from medsynth.diffusion.sampling import (
    DEFAULT_NUM_STEPS,
    SAMPLERS,
    ClassifierFreeGuidance,
    check_sampler,
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
    "RectifiedFlow",
    "FLOW_SAMPLERS",
    "TIMESTEP_SAMPLING",
    "heun_schedule",
    "shift_time",
    "PROCESSES",
    "build_process",
    "DEFAULT_NUM_STEPS",
    "SAMPLERS",
    "check_sampler",
    "ClassifierFreeGuidance",
    "guided_output",
    "sample",
]
