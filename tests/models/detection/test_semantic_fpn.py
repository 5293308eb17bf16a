"""segjax.models.detection.semantic_fpn against a PyTorch twin of Detectron2's SemSegFPNHead and its loss.

The twin below is Detectron2's structure (detectron2/modeling/meta_arch/semantic_seg.py) in plain torch.nn: per
level Conv2d(bias=not norm) + GroupNorm + ReLU (+ nn.Upsample(2, bilinear, align_corners=False)) blocks, a sum,
a 1x1 predictor and F.interpolate(scale_factor=common_stride, bilinear, align_corners=False).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.detection import semantic_fpn as S

torch = pytest.importorskip("torch")
tnn = torch.nn
tF = torch.nn.functional

C, DIMS, GROUPS, K = 16, 8, 4, 5


class TorchSemSegFPNHead(tnn.Module):
  """Detectron2's SemSegFPNHead (inference path: logits upsampled to the image)."""

  def __init__(self, in_channels, num_classes, conv_dims, common_stride=4, norm="GN", num_groups=32,
               strides=(4, 8, 16, 32)):
    super().__init__()
    self.common_stride = common_stride
    self.scale_heads = tnn.ModuleList()
    for stride in strides:
      ops = []
      for k in range(max(1, int(np.log2(stride) - np.log2(common_stride)))):
        ops.append(tnn.Conv2d(in_channels if k == 0 else conv_dims, conv_dims, 3, padding=1, bias=not norm))
        if norm:
          ops.append(tnn.GroupNorm(num_groups, conv_dims))
        ops.append(tnn.ReLU())
        if stride != common_stride:
          ops.append(tnn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
      self.scale_heads.append(tnn.Sequential(*ops))
    self.predictor = tnn.Conv2d(conv_dims, num_classes, 1)

  def forward(self, features):
    x = None
    for head, f in zip(self.scale_heads, features):
      x = head(f) if x is None else x + head(f)
    x = self.predictor(x)
    return tF.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)


def _features(rng, batch, image, channels=C):
  return {name: rng.normal(size=(batch, image[0] // s, image[1] // s, channels)).astype(np.float32)
          for name, s in zip(S.IN_FEATURES, S.FEATURE_STRIDES)}


def _copy_params(twin: TorchSemSegFPNHead, params) -> None:
  """Flax parameters (HWIO kernels) into the twin (OIHW), in place."""
  with torch.no_grad():
    for level, head in enumerate(twin.scale_heads):
      convs = [m for m in head if isinstance(m, tnn.Conv2d)]
      norms = [m for m in head if isinstance(m, tnn.GroupNorm)]
      for k, conv in enumerate(convs):
        p = params[f"scale_heads_{level}_{k}"]
        conv.weight.copy_(torch.from_numpy(np.array(p["kernel"]).transpose(3, 2, 0, 1)))
        if conv.bias is not None:
          conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))
      for k, norm in enumerate(norms):
        p = params[f"scale_heads_{level}_{k}_norm"]
        norm.weight.copy_(torch.from_numpy(np.array(p["scale"])))
        norm.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    twin.predictor.weight.copy_(torch.from_numpy(np.array(params["predictor"]["kernel"]).transpose(3, 2, 0, 1)))
    twin.predictor.bias.copy_(torch.from_numpy(np.array(params["predictor"]["bias"])))


def _randomise(params, seed):
  """Non-trivial values everywhere (GroupNorm scale/bias and biases start at 1/0)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("image", [(64, 64), (32, 96)])
def test_output_shape(image):
  model = S.SemSegFPNHead(K, conv_dims=DIMS, num_groups=GROUPS)
  feats = _features(np.random.default_rng(0), 2, image)
  feats["pool"] = np.zeros((2, image[0] // 64, image[1] // 64, C), np.float32)  # FPN's P6: ignored
  variables = model.init(jax.random.key(0), feats)
  chex.assert_shape(model.apply(variables, feats), (2, *image, K))


def _param_count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("norm", ["GN", ""])
def test_matches_torch_twin(norm):
  torch.manual_seed(0)
  image = (64, 96)
  model = S.SemSegFPNHead(K, conv_dims=DIMS, norm=norm, num_groups=GROUPS)
  feats = _features(np.random.default_rng(1), 2, image)
  params = _randomise(model.init(jax.random.key(0), feats)["params"], 1)
  twin = TorchSemSegFPNHead(C, K, DIMS, norm=norm, num_groups=GROUPS).eval()
  assert _param_count(params) == sum(p.numel() for p in twin.parameters())
  # Detectron2's layout: P2 one conv, P3 one, P4 two, P5 three; no bias before GroupNorm.
  assert sorted(k for k in params if not k.endswith("_norm")) == sorted(
      ["scale_heads_0_0", "scale_heads_1_0", "scale_heads_2_0", "scale_heads_2_1", "scale_heads_3_0",
       "scale_heads_3_1", "scale_heads_3_2", "predictor"])
  assert ("bias" in params["scale_heads_0_0"]) == (norm == "")
  _copy_params(twin, params)
  got = jax.jit(model.apply)({"params": params}, feats)
  with torch.no_grad():
    want = twin([torch.from_numpy(feats[n].transpose(0, 3, 1, 2)) for n in S.IN_FEATURES])
  want = want.numpy().transpose(0, 2, 3, 1)
  assert got.shape == want.shape == (2, *image, K)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_init_is_c2_msra_fill():
  kernel = S.c2_msra_fill(jax.random.key(0), (3, 3, 64, 256))
  np.testing.assert_allclose(float(jnp.std(kernel)), np.sqrt(2.0 / (9 * 256)), rtol=0.02)
  assert float(jnp.max(jnp.abs(kernel))) > 2.5 * np.sqrt(2.0 / (9 * 256))  # untruncated
  params = S.SemSegFPNHead(K, conv_dims=DIMS, num_groups=GROUPS).init(
      jax.random.key(0), _features(np.random.default_rng(0), 1, (64, 64)))["params"]
  np.testing.assert_array_equal(params["predictor"]["bias"], 0)


def test_rejects_bad_config():
  feats = _features(np.random.default_rng(0), 1, (64, 64))
  with pytest.raises(ValueError, match="num_groups"):
    S.SemSegFPNHead(K, conv_dims=DIMS, num_groups=3).init(jax.random.key(0), feats)
  with pytest.raises(ValueError, match="norm"):
    S.SemSegFPNHead(K, conv_dims=DIMS, norm="BN").init(jax.random.key(0), feats)
  with pytest.raises(ValueError, match="lack"):
    S.SemSegFPNHead(K, conv_dims=DIMS, num_groups=GROUPS).init(jax.random.key(0), {"0": feats["0"]})


def test_loss_matches_torch_cross_entropy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 16, 24, K)).astype(np.float32) * 3
  labels = rng.integers(0, K, size=(2, 16, 24))
  labels[rng.random(labels.shape) < 0.3] = 255
  got = S.semantic_loss(jnp.asarray(logits), jnp.asarray(labels))
  want = tF.cross_entropy(torch.from_numpy(logits.transpose(0, 3, 1, 2)), torch.from_numpy(labels),
                          ignore_index=255, reduction="mean")
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=1e-6)
  # Other ignore labels, and the gradient against torch's.
  labels2 = np.where(labels == 255, 7, labels)
  g = jax.grad(lambda x: S.semantic_loss(x, jnp.asarray(labels2), ignore_label=7))(jnp.asarray(logits))
  t = torch.from_numpy(logits.transpose(0, 3, 1, 2)).requires_grad_()
  tF.cross_entropy(t, torch.from_numpy(labels2), ignore_index=7).backward()
  np.testing.assert_allclose(g, t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-7)


def test_loss_all_ignored_is_zero_with_zero_gradient():
  logits = jnp.asarray(np.random.default_rng(3).normal(size=(1, 8, 8, K)), jnp.float32)
  labels = jnp.full((1, 8, 8), 255)
  loss, grad = jax.value_and_grad(S.semantic_loss)(logits, labels)
  assert float(loss) == 0.0
  assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_loss_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="labels"):
    S.semantic_loss(jnp.zeros((1, 8, 8, K)), jnp.zeros((1, 8, 4), jnp.int32))
