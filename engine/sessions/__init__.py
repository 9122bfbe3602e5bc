"""GradientTape sessions: named tensors and variables, tapes that record ops, and gradients
computed by replaying what a tape recorded as a pure JAX function."""
