"""gradtape's tape engine: an op table, a graph interpreter, JAX transforms, compile cache
and GradientTape sessions. Framework-free: no web or validation library is imported here."""

import jax

# float64 and int64 are part of the wire format; float32 stays the default for numbers.
jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
