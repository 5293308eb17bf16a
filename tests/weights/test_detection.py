"""segjax.weights.detection: torchvision Mask R-CNN / Faster R-CNN state dicts (files read without unpickling
code) into MaskRCNN's params and batch_stats; the layouts checked by computing with the converted arrays, the
older key spellings of the published COCO checkpoints, and the errors for a file that does not fit the model."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.detection.mask_rcnn import MaskRCNN
from segjax.weights.detection import from_torchvision, load_torchvision_detection
from tests.conftest import import_torchvision

K = 2


def abstract(model):
  v = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 64, 64, 3)), train=False))
  return v["params"], v["batch_stats"]


@pytest.fixture(scope="module")
def tv_models():
  """(torchvision, Mask R-CNN state dict, Faster R-CNN state dict) with random weights and BN statistics."""
  torchvision = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  detection = torchvision.models.detection
  out = []
  for build in (detection.maskrcnn_resnet50_fpn, detection.fasterrcnn_resnet50_fpn):
    model = build(weights=None, weights_backbone=None, num_classes=K + 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in state.items():  # nonzero biases and BN statistics, so that every layout shows
      if v.is_floating_point() and (k.endswith(("bias", "running_mean", "running_var"))):
        v.uniform_(0.5, 1.5)
    out.append(state)
  return torchvision, *out


@pytest.fixture(scope="module")
def mask_rcnn_shapes():
  return abstract(MaskRCNN(num_classes=K))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_file_loads_with_every_layout(tv_models, mask_rcnn_shapes, tmp_path, suffix):
  _, state, _ = tv_models
  import torch  # pylint: disable=import-outside-toplevel
  path = tmp_path / f"maskrcnn{suffix}"
  if suffix == ".pth":
    torch.save(state, path)
  else:
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
  params, stats = load_torchvision_detection(str(path), *mask_rcnn_shapes)
  jax.tree.map(lambda want, got: np.testing.assert_equal(np.shape(got), want.shape), mask_rcnn_shapes,
               (params, stats))
  sd = {k: v.numpy() for k, v in state.items()}
  # Convolutions OIHW -> HWIO; BN statistics in batch_stats.
  np.testing.assert_array_equal(params["backbone"]["body"]["layer2_0"]["conv2"]["kernel"],
                                sd["backbone.body.layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats["backbone"]["body"]["layer4_2"]["bn3"]["var"],
                                sd["backbone.body.layer4.2.bn3.running_var"])
  np.testing.assert_array_equal(params["backbone"]["fpn"]["layer_blocks_3"]["bias"],
                                sd["backbone.fpn.layer_blocks.3.0.bias"])
  np.testing.assert_array_equal(params["rpn"]["conv"]["kernel"],
                                sd["rpn.head.conv.0.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["mask_head"]["mask_fcn4"]["bias"], sd["roi_heads.mask_head.3.0.bias"])
  # fc6: the same function of a [256, 7, 7] RoI feature flattened channels-first (torch) and channels-last here.
  x = np.random.default_rng(0).normal(size=(256, 7, 7)).astype(np.float32)
  want = sd["roi_heads.box_head.fc6.weight"] @ x.reshape(-1)
  got = x.transpose(1, 2, 0).reshape(-1) @ params["box_head"]["fc6"]["kernel"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(params["box_predictor"]["bbox_pred"]["kernel"],
                                sd["roi_heads.box_predictor.bbox_pred.weight"].T)
  # The transposed convolution: [in, out, kh, kw] -> [kh, kw, in, out].
  np.testing.assert_array_equal(params["mask_predictor"]["conv5_mask"]["kernel"][1, 0],
                                sd["roi_heads.mask_predictor.conv5_mask.weight"][:, :, 1, 0])


def test_old_key_names_of_published_checkpoints(tv_models, mask_rcnn_shapes):
  """torchvision < 0.13 (the COCO checkpoints' era) had no Conv2dNormActivation wrappers: `.0` / `.0.0` absent,
  the mask head's convolutions named mask_fcn1..4."""
  _, state, _ = tv_models
  sd = {k: v.numpy() for k, v in state.items()}

  def old(key):
    key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d)\.0\.", r"\1.", key)
    key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    return re.sub(r"^roi_heads\.mask_head\.(\d)\.0\.", lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.", key)

  renamed = {old(k): v for k, v in sd.items()}
  assert "roi_heads.mask_head.mask_fcn1.weight" in renamed and "rpn.head.conv.weight" in renamed
  jax.tree.map(np.testing.assert_array_equal, load_torchvision_detection(renamed, *mask_rcnn_shapes),
               load_torchvision_detection(sd, *mask_rcnn_shapes))


def test_faster_rcnn(tv_models, mask_rcnn_shapes):
  _, mask_state, faster_state = tv_models
  faster = {k: v.numpy() for k, v in faster_state.items()}
  params, _ = load_torchvision_detection(faster, *abstract(MaskRCNN(num_classes=K, mask_head=False)))
  assert not any(k.startswith("mask") for k in params)
  with pytest.raises(ValueError, match="no mask head.*mask_head=False"):
    load_torchvision_detection(faster, *mask_rcnn_shapes)
  with pytest.raises(ValueError, match=r"roi_heads\.mask_.*mask_head=True"):
    load_torchvision_detection({k: v.numpy() for k, v in mask_state.items()},
                               *abstract(MaskRCNN(num_classes=K, mask_head=False)))


def test_errors_name_the_key_and_the_fix(tv_models, mask_rcnn_shapes):
  _, state, _ = tv_models
  sd = {k: v.numpy() for k, v in state.items()}
  with pytest.raises(ValueError, match=r"box_predictor.*3 classes with background.*num_classes.*to 2"):
    load_torchvision_detection(sd, *abstract(MaskRCNN(num_classes=5)))
  deeper = dict(sd, **{"backbone.body.layer3.6.conv1.weight": sd["backbone.body.layer3.5.conv1.weight"]})
  with pytest.raises(ValueError, match=r"layer3\.6\.conv1\.weight.*resnet101"):
    load_torchvision_detection(deeper, *mask_rcnn_shapes)
  missing = {k: v for k, v in sd.items() if not k.startswith("rpn.head.bbox_pred")}
  with pytest.raises(ValueError, match="rpn/bbox_pred"):
    load_torchvision_detection(missing, *mask_rcnn_shapes)
  with pytest.raises(ValueError, match="roi_heads.keypoint_head.0.weight"):
    load_torchvision_detection(dict(sd, **{"roi_heads.keypoint_head.0.weight": np.zeros(3)}), *mask_rcnn_shapes)
  v2 = dict(sd, **{"roi_heads.box_head.0.0.weight": np.zeros((256, 256, 3, 3), np.float32)})
  with pytest.raises(ValueError, match="_v2 state dict.*v1"):
    load_torchvision_detection(v2, *mask_rcnn_shapes)
  with pytest.raises(ValueError, match="representation_size"):
    load_torchvision_detection(sd, *abstract(MaskRCNN(num_classes=K, representation_size=512)))


def test_from_torchvision_accepts_stripped_backbone_prefix(tv_models):
  """segjax.weights.files.read_torch strips a "backbone." prefix (for segmentation checkpoints)."""
  _, state, _ = tv_models
  sd = {k: v.numpy() for k, v in state.items()}
  stripped = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
  a, b = from_torchvision(sd)[:2], from_torchvision(stripped)[:2]
  assert a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()


def test_an_imagenet_resnet50_file_initialises_the_backbone_through_init_from(tmp_path):
  """config.init_from with torchvision's ImageNet ResNet-50 (the COCO recipe's start): "auto" finds the ResNet
  inside the FPN backbone (backbone/body); the heads keep their initialisation."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from segjax import weights  # pylint: disable=import-outside-toplevel
  torchvision = import_torchvision()
  torch.manual_seed(0)
  net = torchvision.models.resnet50()
  net.bn1.running_mean.uniform_(-1, 1)
  torch.save(net.state_dict(), tmp_path / "resnet50.pth")
  model = MaskRCNN(num_classes=K, backbone="resnet50")
  params, stats = abstract(model)
  init_from = ml_collections.ConfigDict({"path": str(tmp_path / "resnet50.pth"), "format": "auto",
                                         "architecture": "auto", "target": "auto", "set_normalization": True})
  new_params, new_stats, _ = weights.load_into(params, stats, init_from, model)
  body = new_params["backbone"]["body"]
  np.testing.assert_array_equal(body["conv1"]["kernel"], net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(body["layer4_2"]["conv3"]["kernel"],
                                net.layer4[2].conv3.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(new_stats["backbone"]["body"]["bn1"]["mean"], net.bn1.running_mean.numpy())
  assert isinstance(new_params["rpn"]["conv"]["kernel"] if "conv" in new_params["rpn"] else
                    jax.tree.leaves(new_params["rpn"])[0], jax.ShapeDtypeStruct)
