"""U-Net with a VGG16 encoder (TernausNet-16): parameter counts written out from TernausNet's blocks, decoder
shapes, and the 4x4 transposed convolution against PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segjax.models.unet_vgg import DecoderBlock, UNetVGG16
from tests.models.common import VGG16_CONVS, abstract_init, conv_param_count, count_params


def ternausnet16_param_count(classes, f=32, transpose=False, bn=False):
  """TernausNet's UNet16 (ternausnet/models.py) written out block by block: (input, middle, output) widths."""
  encoder = sum(conv_param_count(cin, cout) for cin, cout in VGG16_CONVS)
  if bn:
    encoder += sum(2 * cout for _, cout in VGG16_CONVS)  # BatchNorm scale and offset
  blocks = [(512, 16 * f, 8 * f),           # center: pool5
            (512 + 8 * f, 16 * f, 8 * f),   # dec5: center + conv5
            (512 + 8 * f, 16 * f, 8 * f),   # dec4: dec5 + conv4
            (256 + 8 * f, 8 * f, 2 * f),    # dec3: dec4 + conv3
            (128 + 2 * f, 4 * f, f)]        # dec2: dec3 + conv2
  # bilinear: two 3x3 convs; transpose: a 3x3 conv and a 4x4 transposed conv.
  decoder = sum(conv_param_count(cin, mid) + conv_param_count(mid, out, 4 if transpose else 3)
                for cin, mid, out in blocks)
  decoder += conv_param_count(64 + f, f)  # dec1: dec2 + conv1
  return encoder + decoder + conv_param_count(f, classes, 1)


@pytest.mark.parametrize("kwargs,expected", [
    ({}, 29_306_465), ({"upsample": "transpose"}, 32_202_337), ({"batch_norm": True}, 29_314_913)])
def test_unet_vgg16_parameter_count(kwargs, expected):
  assert sum(conv_param_count(cin, cout) for cin, cout in VGG16_CONVS) == 14_714_688
  assert ternausnet16_param_count(1, transpose=kwargs.get("upsample") == "transpose",
                                  bn=kwargs.get("batch_norm", False)) == expected
  model = UNetVGG16(num_classes=1, **kwargs)
  counts = {count_params(abstract_init(model, (1, h, w, 3))[1]["params"]) for h, w in ((32, 32), (64, 96))}
  assert counts == {expected}
  assert count_params(abstract_init(UNetVGG16(num_classes=7, num_filters=8), (1, 32, 32, 3))[1]["params"]) == (
      ternausnet16_param_count(7, f=8))


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_unet_vgg16_shapes(upsample):
  model = UNetVGG16(num_classes=5, num_filters=8, upsample=upsample, dtype=jnp.bfloat16)
  logits, variables = abstract_init(model, (2, 64, 96, 3), capture_intermediates=True)
  assert logits.shape == (2, 64, 96, 5) and logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  sides = {k: variables["intermediates"][k]["__call__"][0].shape[1:] for k in
           ("center", "dec5", "dec4", "dec3", "dec2", "dec1")}
  assert sides == {"center": (4, 6, 64), "dec5": (8, 12, 64), "dec4": (16, 24, 64), "dec3": (32, 48, 16),
                   "dec2": (64, 96, 8), "dec1": (64, 96, 8)}
  assert model.size_divisor == 32
  with pytest.raises(ValueError, match="divisible by 32"):
    abstract_init(model, (1, 48, 64, 3))


def test_unet_vgg16_transposed_conv_is_pytorchs_k4_s2_p1():
  # PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1) is the gradient of Conv2d(kernel 4, stride 2,
  # padding 1) with respect to its input (PyTorch docs); Flax stores the kernel unflipped, hence the flip.
  block = DecoderBlock(middle=3, features=2, upsample="transpose")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 5, 6, 4)).astype(np.float32)
  shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), x))["params"]
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  y = block.apply({"params": params}, x)
  assert y.shape == (1, 10, 12, 2)
  middle = jax.nn.relu(lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv"]["bias"])
  kernel = params["deconv"]["kernel"]  # [4, 4, middle, features]
  torch_weight = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)  # the Conv2d(features -> middle) it is the gradient of

  def forward(z):  # Conv2d(kernel 4, stride 2, padding 1)
    return lax.conv_general_dilated(z, torch_weight, (2, 2), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  adjoint = jax.vjp(forward, jnp.zeros((1, 10, 12, 2)))[1](middle)[0]
  np.testing.assert_allclose(y, jax.nn.relu(adjoint + params["deconv"]["bias"]), rtol=1e-4, atol=1e-4)
