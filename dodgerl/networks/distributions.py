"""The tanh-squashed Gaussian policy distribution: sampling and exact log-probabilities."""

import jax
import jax.numpy as jnp
import numpy as np

_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


def tanh_gaussian_log_prob(
    pre_tanh: jnp.ndarray, mean: jnp.ndarray, log_std: jnp.ndarray
) -> jnp.ndarray:
    """log pi(tanh(u)) for u ~ N(mean, exp(log_std)), summed over the last (action) axis.

    Change of variables: log N(u) - sum log(1 - tanh(u)^2), with the Jacobian term in the
    overflow-free form log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
    """
    z = (pre_tanh - mean) * jnp.exp(-log_std)
    gaussian = -0.5 * jnp.square(z) - log_std - _HALF_LOG_2PI
    log_det_jacobian = 2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return jnp.sum(gaussian - log_det_jacobian, axis=-1)


def sample_tanh_gaussian(
    key: jax.Array, mean: jnp.ndarray, log_std: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Reparameterised sample a = tanh(mean + std * eps) and its log-probability."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    return jnp.tanh(pre_tanh), tanh_gaussian_log_prob(pre_tanh, mean, log_std)
