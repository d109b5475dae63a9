"""MLP heads: a tanh-Gaussian actor head and an ensemble of N Q-heads (one ``nn.vmap`` over params)."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dodgerl.networks.encoders import trunk_output


class MLP(nn.Module):
    """ReLU hidden layers ``net_arch``, then a linear layer of ``out_features``.

    With ``layer_norm`` each hidden layer is Dense -> LayerNorm -> ReLU (as the critics of
    DroQ / RLPD), which keeps Q-estimates bounded when the critic is updated often.
    """

    net_arch: Sequence[int]
    out_features: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for width in self.net_arch:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        return nn.Dense(self.out_features)(x)


class TanhGaussianActorHead(nn.Module):
    """Maps features to the mean and log-std of a Gaussian over pre-tanh actions.

    log_std is squashed smoothly into [log_std_min, log_std_max] with a tanh (as DrQ does) rather
    than clipped, so its gradient never dies at the bounds.

    ``trunk_features`` > 0 first maps the features through a trunk of the actor's own: a dense
    layer of that width, then ``trunk_output`` (``"relu"`` or ``"layernorm_tanh"``, as
    NatureCNN's). With ``encoder_sharing: convs`` it reads the critic's conv output (DrQ-v2).
    """

    net_arch: Sequence[int]
    action_dim: int
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    trunk_features: int = 0
    trunk_output: str = "relu"

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        if self.trunk_features:
            features = trunk_output(nn.Dense(self.trunk_features, name="Trunk_Dense")(features),
                                    self.trunk_output, nn.LayerNorm(name="Trunk_LayerNorm"))
        out = MLP(self.net_arch, 2 * self.action_dim)(features)
        mean, raw_log_std = jnp.split(out, 2, axis=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (
            jnp.tanh(raw_log_std) + 1.0
        )
        return mean, log_std


class _QHead(nn.Module):
    net_arch: Sequence[int]
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return MLP(self.net_arch, 1, self.layer_norm)(x)[..., 0]


class CriticEnsemble(nn.Module):
    """``n_critics`` independent Q(features, action) MLPs evaluated as one vmapped network.

    Returns Q-values of shape (n_critics, *batch). ``layer_norm``: LayerNorm after every hidden
    Dense layer of each Q-head.
    """

    net_arch: Sequence[int]
    n_critics: int = 2
    layer_norm: bool = False

    @nn.compact
    def __call__(self, features: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
        x = jnp.concatenate([features, actions.astype(features.dtype)], axis=-1)
        ensemble = nn.vmap(
            _QHead,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.n_critics,
        )
        return ensemble(self.net_arch, self.layer_norm)(x)
