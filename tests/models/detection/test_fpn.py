"""segjax.models.detection.fpn against torchvision's FeaturePyramidNetwork + LastLevelMaxPool and F.interpolate."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.detection import fpn as F
from tests.conftest import import_torchvision


def test_fpn_matches_torchvision():
  torchvision = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  ops = torchvision.ops.feature_pyramid_network
  torch.manual_seed(0)
  in_channels = [4, 8, 16, 32]
  tv = ops.FeaturePyramidNetwork(in_channels, 8, extra_blocks=ops.LastLevelMaxPool()).eval()
  rng = np.random.default_rng(0)
  # Odd sizes: the top-down path upsamples to the lateral's size (not 2x), P6 halves with ceil.
  sizes = [(17, 23), (9, 12), (5, 6), (3, 3)]
  feats = [rng.normal(size=(2, h, w, c)).astype(np.float32) for (h, w), c in zip(sizes, in_channels)]
  with torch.no_grad():
    want = tv({str(i): torch.from_numpy(f.transpose(0, 3, 1, 2)) for i, f in enumerate(feats)})
  params = {}
  for kind in ("inner_blocks", "layer_blocks"):
    for i in range(4):
      block = getattr(tv, kind)[i][0]
      params[f"{kind}_{i}"] = {"kernel": block.weight.detach().numpy().transpose(2, 3, 1, 0),
                               "bias": block.bias.detach().numpy()}
  model = F.FPN(8)
  chex.assert_trees_all_equal_shapes(jax.eval_shape(lambda: model.init(jax.random.key(0), feats))["params"], params)
  got = jax.jit(model.apply)({"params": params}, feats)
  assert list(got) == list(want) == ["0", "1", "2", "3", "pool"]
  for k in got:
    np.testing.assert_allclose(got[k], want[k].numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5, err_msg=k)
  chex.assert_shape(got["pool"], (2, 2, 2, 8))


@pytest.mark.parametrize("size,out", [((3, 4), (6, 8)), ((3, 4), (7, 9)), ((5, 3), (9, 10)), ((4, 4), (4, 4))])
def test_upsample_nearest_matches_interpolate(size, out):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).normal(size=(1, *size, 2)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=out, mode="nearest")
  np.testing.assert_array_equal(F.upsample_nearest(jnp.asarray(x), out), want.numpy().transpose(0, 2, 3, 1))


def test_small_backbone_strides_and_frozen_bn():
  model = F.BackboneWithFPN("small", frozen_bn=False, channels=8, small_widths=(4, 8, 8, 16))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 64, 96, 3)), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
  out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert {k: v.shape for k, v in out.items()} == {"0": (2, 16, 24, 8), "1": (2, 8, 12, 8), "2": (2, 4, 6, 8),
                                                  "3": (2, 2, 3, 8), "pool": (2, 1, 2, 8)}
  # Trainable BN: statistics move in training; frozen: they never do and train == eval.
  assert not np.allclose(updates["batch_stats"]["body"]["stage1_bn1"]["mean"], 0)
  frozen = F.BackboneWithFPN("small", frozen_bn=True, channels=8, small_widths=(4, 8, 8, 16))
  out_train, updates = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
  chex.assert_trees_all_close(out_train, frozen.apply(variables, x, train=False))


def test_resnet_backbone_shapes_and_unknown_backbone():
  model = F.BackboneWithFPN("resnet50", channels=16)
  x = jnp.zeros((1, 64, 64, 3))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))[0]
  assert {k: v.shape for k, v in out.items()} == {"0": (1, 16, 16, 16), "1": (1, 8, 8, 16), "2": (1, 4, 4, 16),
                                                  "3": (1, 2, 2, 16), "pool": (1, 1, 1, 16)}
  with pytest.raises(ValueError, match="resnet50.*small"):
    F.BackboneWithFPN("vgg16").init(jax.random.key(0), x, train=False)


@pytest.mark.parametrize("path,layers,frozen_bn,want", [
    (("conv1", "kernel"), 3, True, False),
    (("bn1", "scale"), 5, False, True),
    (("bn1", "scale"), 4, False, False),
    (("layer1_0", "conv1", "kernel"), 3, True, False),
    (("layer1_0", "conv1", "kernel"), 4, True, True),
    (("layer2_0", "conv2", "kernel"), 3, True, True),
    (("layer2_0", "bn2", "scale"), 3, True, False),
    (("layer2_0", "bn2", "scale"), 3, False, True),
    (("layer4_0", "downsample_1", "bias"), 3, True, False),
    (("layer4_0", "downsample_0", "kernel"), 1, True, True),
    (("layer3_0", "conv1", "kernel"), 1, True, False),
    (("stage1_conv1", "kernel"), 0, True, True),
    (("stage1_bn1", "scale"), 3, True, False),
])
def test_trainable_backbone_mask_is_torchvisions_rule(path, layers, frozen_bn, want):
  assert F.trainable_backbone_mask(path, layers, frozen_bn) is want
