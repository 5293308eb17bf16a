"""Segmentation-specific array ops: pooling with argmax, index unpooling, upsampling."""

from segjax.ops.pooling import max_pool_with_argmax, max_unpool
from segjax.ops.upsample import (METHODS as UPSAMPLE_METHODS, Upsample, bed_of_nails, bilinear_kernel,
                                 resize_bilinear, transpose_kernel_size, transposed_conv, upsample_nearest)

__all__ = [
    "UPSAMPLE_METHODS", "Upsample", "bed_of_nails", "bilinear_kernel", "max_pool_with_argmax", "max_unpool",
    "resize_bilinear", "transpose_kernel_size", "transposed_conv", "upsample_nearest",
]
