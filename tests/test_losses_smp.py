"""segjax's losses against segmentation_models_pytorch's (focal, Lovász-softmax, Tversky, Jaccard, Dice) and
torch's cross-entropy with label smoothing, on random inputs with and without ignored pixels.

segjax ignores pixels through weights 0; SMP and torch through ignore_index, so the ignored pixels carry
IGNORE there.
"""

import numpy as np
import pytest

from segjax import losses, losses_extra
from tests.conftest import import_torchvision

K = 5
SHAPE = (2, 6, 7)
IGNORE = 255


@pytest.fixture(scope="module")
def smp():
  import_torchvision()
  return pytest.importorskip("segmentation_models_pytorch")


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


def make_inputs(seed, ignore_fraction):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, SHAPE + (K,)).astype(np.float32)
  labels = rng.integers(0, K, SHAPE)
  labels.flat[:K] = np.arange(K)  # every class present among the valid pixels (Dice's conventions then agree)
  weights = (rng.random(SHAPE) > ignore_fraction).astype(np.float32)
  weights.flat[:K] = 1.0
  return logits, np.where(weights > 0, labels, IGNORE), weights


def _torch_inputs(torch, logits, labels):
  return torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels).long()


CASES = {
    "focal": (lambda m: m.FocalLoss("multiclass", gamma=2.0, ignore_index=IGNORE),
              lambda *a: losses_extra.focal_loss(*a, gamma=2.0)),
    "focal_alpha_gamma": (lambda m: m.FocalLoss("multiclass", alpha=0.25, gamma=1.5, ignore_index=IGNORE),
                          lambda *a: losses_extra.focal_loss(*a, gamma=1.5, alpha=0.25)),
    "focal_class_weights": (lambda m: m.FocalLoss("multiclass", ignore_index=IGNORE,
                                                  class_weights=[1.0, 2.0, 0.5, 1.0, 3.0]),
                            lambda *a: losses_extra.focal_loss(*a, class_weights=np.array([1.0, 2.0, 0.5, 1.0, 3.0]))),
    "lovasz": (lambda m: m.LovaszLoss("multiclass", per_image=False, ignore_index=IGNORE),
               losses_extra.lovasz_softmax_loss),
    "tversky": (lambda m: m.TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=1.0, ignore_index=IGNORE),
                lambda *a: losses_extra.tversky_loss(*a, alpha=0.3, beta=0.7)),
    "focal_tversky": (lambda m: m.TverskyLoss("multiclass", alpha=0.7, beta=0.3, gamma=0.75, ignore_index=IGNORE,
                                              class_weights=[1.0, 2.0, 0.5, 1.0, 3.0]),
                      lambda *a: losses_extra.tversky_loss(*a, alpha=0.7, beta=0.3, gamma=0.75,
                                                           class_weights=np.array([1.0, 2.0, 0.5, 1.0, 3.0]))),
    "jaccard": (lambda m: m.JaccardLoss("multiclass", ignore_index=IGNORE), losses_extra.jaccard_loss),
    "jaccard_smooth": (lambda m: m.JaccardLoss("multiclass", smooth=1.0, ignore_index=IGNORE),
                       lambda *a: losses_extra.jaccard_loss(*a, smooth=1.0)),
    # segjax's Dice equals SMP's when every class has ground truth (SMP zeroes absent classes' loss). SMP computes
    # Dice as Tversky(0.5, 0.5): (I + s) / ((P + G) / 2 + s), so its smooth s is segjax's 2 s.
    "dice": (lambda m: m.DiceLoss("multiclass", smooth=0.5, ignore_index=IGNORE), losses.dice_loss),
}


@pytest.mark.parametrize("ignore_fraction", [0.0, 0.3])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_smp(smp, torch, name, ignore_fraction):
  make_smp, ours = CASES[name]
  for seed in range(2):
    logits, labels, weights = make_inputs(seed, ignore_fraction)
    want = make_smp(smp.losses)(*_torch_inputs(torch, logits, labels)).item()
    np.testing.assert_allclose(ours(logits, labels, weights), want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_lovasz_with_absent_classes_matches_smp(smp, torch):
  # Only classes 0 and 1 in the labels: the mean runs over the present classes only.
  logits, labels, weights = make_inputs(3, 0.3)
  labels = np.where(weights > 0, np.random.default_rng(3).integers(0, 2, SHAPE), IGNORE)
  want = smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE)(*_torch_inputs(torch, logits, labels)).item()
  np.testing.assert_allclose(losses_extra.lovasz_softmax_loss(logits, labels, weights), want, rtol=1e-5)


@pytest.mark.parametrize("ignore_fraction", [0.0, 0.3])
def test_label_smoothing_matches_torch(torch, ignore_fraction):
  logits, labels, weights = make_inputs(4, ignore_fraction)
  class_weights = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
  x, y = _torch_inputs(torch, logits, labels)
  for cw in (None, class_weights):
    want = torch.nn.functional.cross_entropy(x, y, weight=None if cw is None else torch.tensor(cw).float(),
                                             ignore_index=IGNORE, label_smoothing=0.1).item()
    got = losses.cross_entropy(logits, labels, weights, cw, label_smoothing=0.1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
