"""Benchmarks of nestad_tf against Keras' activations, recomputation and XLA.

    python -m nestad_tf.bench model --model efficientnet_b0_mish
    python -m nestad_tf.bench kernel --activations silu,gelu,mish

`model` measures one training step (forward, backward, optimizer update in a
`tf.function`) per model and mode (keras, recompute, nestad, nestad-tf, floor;
XLA off and on), each in a process of its own: peak allocator memory,
activation memory (peak minus the floor peak), per-sample slope, step time.
`kernel` measures the GB/s of the fused kernels against TF ops, XLA and the
copy bandwidth. Both print a table and write JSON and a PNG chart; see
BENCHMARKS.md for the results and how to read them. `model --backend torch|jax`
runs the same comparison on Keras' torch and JAX backends (bytes autograd saves,
XLA's buffers; frameworks.py).
"""

from .cli import build_parser, main

__all__ = ["build_parser", "main"]
