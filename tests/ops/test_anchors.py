"""segjax.ops.anchors against torchvision's AnchorGenerator (maskrcnn_resnet50_fpn's sizes and ratios) and a
numpy loop, for image sizes that divide the feature maps evenly and ones that do not (strides by floor division)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.ops import anchors as A
from tests.conftest import import_torchvision


def fpn_sizes(h, w):
  """Feature sizes of a ResNet-FPN on an h x w input (P2..P5 at strides 4..32, P6 a stride-2 pool of P5), each
  halving rounded up: on sizes that are not multiples of 32 the strides image // feature are not powers of 2."""
  sizes, fh, fw = [], -(-h // 4), -(-w // 4)
  for _ in range(4):
    sizes.append((fh, fw))
    fh, fw = -(-fh // 2), -(-fw // 2)
  sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
  return sizes


def np_anchors(image_size, feature_sizes, sizes, ratios):
  """A loop over levels, positions and cell anchors, in torchvision's order; float64 then rounded half to even."""
  out = []
  for (fh, fw), lvl_sizes, lvl_ratios in zip(feature_sizes, sizes, ratios):
    sh, sw = image_size[0] // fh, image_size[1] // fw
    cells = []
    for r in lvl_ratios:
      for s in lvl_sizes:
        hr = np.sqrt(np.float32(r))
        wr = np.float32(1) / hr
        w, h = np.float32(wr * np.float32(s)), np.float32(hr * np.float32(s))
        cells.append([np.round(-w / np.float32(2)), np.round(-h / np.float32(2)), np.round(w / np.float32(2)),
                      np.round(h / np.float32(2))])
    for y in range(fh):
      for x in range(fw):
        for c in cells:
          out.append([x * sw + c[0], y * sh + c[1], x * sw + c[2], y * sh + c[3]])
  return np.asarray(out, np.float32).reshape(-1, 4)


@pytest.mark.parametrize("image_size", [(64, 96), (100, 75), (33, 47)])
def test_fpn_anchors_match_torchvision(image_size):
  torchvision = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.anchor_utils import AnchorGenerator  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.image_list import ImageList  # pylint: disable=import-outside-toplevel
  del torchvision
  feature_sizes = fpn_sizes(*image_size)
  generator = AnchorGenerator(A.FPN_SIZES, A.FPN_ASPECT_RATIOS)  # as maskrcnn_resnet50_fpn builds it
  images = ImageList(torch.zeros(2, 3, *image_size), [image_size, (image_size[0] - 5, image_size[1] - 3)])
  want = generator(images, [torch.zeros(2, 8, *s) for s in feature_sizes])
  got = np.asarray(jax.jit(lambda: A.fpn_anchors(image_size, feature_sizes))())
  for per_image in want:  # one identical list per image
    np.testing.assert_array_equal(got, per_image.numpy())
  np.testing.assert_array_equal(got, np_anchors(image_size, feature_sizes, A.FPN_SIZES, A.FPN_ASPECT_RATIOS))
  assert generator.num_anchors_per_location() == [3] * 5
  counts = A.num_anchors_per_level(feature_sizes)
  assert sum(counts) == got.shape[0]
  levels = A.anchors_per_level(image_size, feature_sizes)
  assert [len(a) for a in levels] == counts
  np.testing.assert_array_equal(np.concatenate(levels), got)


def test_cell_anchors_rounding():
  # 32 * sqrt(2) / 2 = 22.63 -> 23 and 32 / sqrt(2) / 2 = 11.31 -> 11: the FPN P2 cell anchors as torchvision lists.
  np.testing.assert_array_equal(A.cell_anchors((32,), (0.5, 1.0, 2.0)),
                                [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
  # Several sizes per level: ratios outer, sizes inner; 0.5 halves round to even (torch.round).
  got = A.cell_anchors((1, 3, 5), (1.0,))
  np.testing.assert_array_equal(got, [[-0, -0, 0, 0], [-2, -2, 2, 2], [-2, -2, 2, 2]])


def test_strides_floor_divide():
  assert A.anchor_strides((100, 75), [(25, 19), (13, 10)]) == [(4, 3), (7, 7)]


def test_anchors_inside_jit_and_vmap():
  """Anchors are constants: usable inside a jitted, vmapped function of the feature maps' static shapes."""
  image_size, feature_sizes = (64, 64), fpn_sizes(64, 64)

  def per_image(features):  # decode zero deltas: every anchor comes back
    del features
    return A.fpn_anchors(image_size, feature_sizes) + 0.0

  got = jax.jit(jax.vmap(per_image))(jnp.zeros((3, 16, 16, 4)))
  want = np.asarray(A.fpn_anchors(image_size, feature_sizes))
  assert got.shape == (3,) + want.shape
  np.testing.assert_array_equal(got[2], want)


def test_mismatched_levels_raise():
  with pytest.raises(ValueError, match="one entry per level"):
    A.fpn_anchors((64, 64), [(16, 16)])
