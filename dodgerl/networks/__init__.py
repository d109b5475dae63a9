"""Flax networks for SAC: observation encoders, actor and critic heads, the tanh-Gaussian, augmentation."""

from dodgerl.networks.augmentations import (
    SYMMETRY_GROUPS,
    apply_image_symmetries,
    apply_planar_symmetries,
    random_planar_symmetries,
    random_shift,
)
from dodgerl.networks.distributions import sample_tanh_gaussian, tanh_gaussian_log_prob
from dodgerl.networks.encoders import (
    NATURE_CNN_OUTPUTS,
    MLPEncoder,
    NatureCNN,
    SetEncoder,
    nature_cnn_min_size,
    precast_params,
)
from dodgerl.networks.heads import MLP, CriticEnsemble, TanhGaussianActorHead

__all__ = [
    "MLP",
    "NATURE_CNN_OUTPUTS",
    "CriticEnsemble",
    "MLPEncoder",
    "NatureCNN",
    "SYMMETRY_GROUPS",
    "SetEncoder",
    "TanhGaussianActorHead",
    "apply_image_symmetries",
    "apply_planar_symmetries",
    "nature_cnn_min_size",
    "precast_params",
    "random_planar_symmetries",
    "random_shift",
    "sample_tanh_gaussian",
    "tanh_gaussian_log_prob",
]
