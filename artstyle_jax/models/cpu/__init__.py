"""The ConvNeXt's CPU-only forms: what XLA:CPU runs poorly, written for it.

- `depthwise`: the 'shift' depthwise convolution with its hand-written gradient.
- `block_mlp`: a block's pointwise part with a hand-written gradient, the block's whole residual
  branch and the LayerNorm as compiled kernels.
- `kernels` (`kernels.cc`): the C++ kernels those call, built with the host's compiler at first use.

A program picks them for the CPU through `forms.resolve`; on GPU and TPU none of this runs: the
network uses the grouped convolution and autodiff. Each form computes the same function as the
plain one (tests hold them to 1e-5).
"""
