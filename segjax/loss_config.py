"""`config.loss`: which segmentation losses a semantic recipe sums, with what weights and parameters; its checks
and its typed form (LossSettings).

Kept apart from segjax.config so the schema module stays short, and from segjax.losses_extra so the recipe schema
imports no jax code. docs/losses.md defines each loss.
"""

from __future__ import annotations

import dataclasses

import ml_collections

# Terms of the total loss; each `<name>_weight` multiplies one loss, 0 turns it off, any combination sums.
WEIGHTS = ("ce_weight", "dice_weight", "focal_weight", "lovasz_weight", "tversky_weight", "jaccard_weight",
           "ohem_weight")


def config_block() -> ml_collections.ConfigDict:
  """`config.loss` with its defaults: plain cross-entropy."""
  b = ml_collections.ConfigDict()
  b.ce_weight = 1.0
  b.dice_weight = 0.0
  b.focal_weight = 0.0  # SMP's multiclass FocalLoss: one-vs-rest sigmoid focal loss per class
  b.lovasz_weight = 0.0  # Lovász-softmax over the batch (SMP's LovaszLoss(per_image=False))
  b.tversky_weight = 0.0
  b.jaccard_weight = 0.0  # soft IoU
  b.ohem_weight = 0.0  # cross-entropy over MMSegmentation's OHEM-sampled pixels
  b.class_weights = ml_collections.FieldReference(None, field_type=tuple)
  b.aux_weight = 0.4  # weight of auxiliary heads' losses (PSPNet: 0.4, as in the paper)
  b.label_smoothing = 0.0  # cross-entropy and OHEM targets (1 - e) one_hot + e / K, as torch's label_smoothing
  b.dice_squared = False  # V-Net's denominator sum p^2 + sum g^2 instead of sum p + sum g
  b.focal_gamma = 2.0
  b.focal_alpha = ml_collections.FieldReference(None, field_type=float)  # None: no positive/negative balance
  b.tversky_alpha = 0.5  # weight of false positives (0.5 and 0.5: Dice; 0.3 and 0.7 in Salehi et al.)
  b.tversky_beta = 0.5  # weight of false negatives
  b.tversky_gamma = 1.0  # exponent of the loss (focal Tversky; 1: plain)
  # OHEM: keep valid pixels whose true-class probability is under ohem_thresh, at least ohem_min_kept per image
  # (MMSegmentation's defaults 0.7 and 100000); ohem_thresh None: exactly the min_kept hardest by cross-entropy.
  b.ohem_thresh = ml_collections.FieldReference(0.7, field_type=float)
  b.ohem_min_kept = 100000
  return b


def check(block: ml_collections.ConfigDict, fail) -> None:
  """Raises through `fail(key, value, fix)` (segjax.config.validate's) on the first bad value of `config.loss`."""
  if block.aux_weight < 0:
    fail("loss.aux_weight", block.aux_weight, "must be >= 0")
  for key in WEIGHTS:
    if block[key] < 0:
      fail(f"loss.{key}", block[key], "must be >= 0 (0 turns the loss off)")
  if not any(block[key] for key in WEIGHTS):
    fail("loss", {k: block[k] for k in WEIGHTS}, "every loss weight is 0; set at least one > 0, e.g. "
         "loss.ce_weight=1.0")
  if not 0 <= block.label_smoothing <= 1:
    fail("loss.label_smoothing", block.label_smoothing, "give a value in [0, 1] (0: none, 0.1 is common)")
  if block.focal_gamma < 0:
    fail("loss.focal_gamma", block.focal_gamma, "must be >= 0 (0: sigmoid cross-entropy, 2 as in Lin et al.)")
  if block.focal_alpha is not None and not 0 <= block.focal_alpha <= 1:
    fail("loss.focal_alpha", block.focal_alpha, "give a value in [0, 1] (0.25 as in Lin et al.) or None")
  if block.tversky_alpha < 0 or block.tversky_beta < 0 or block.tversky_alpha + block.tversky_beta == 0:
    fail("loss.tversky_alpha/tversky_beta", (block.tversky_alpha, block.tversky_beta),
         "both must be >= 0 and not both 0, e.g. (0.3, 0.7) to weigh false negatives more")
  if block.tversky_gamma <= 0:
    fail("loss.tversky_gamma", block.tversky_gamma, "must be > 0 (1: plain Tversky, 4/3 as in Abraham & Khan)")
  if block.ohem_thresh is not None and not 0 < block.ohem_thresh <= 1:
    fail("loss.ohem_thresh", block.ohem_thresh, "give a probability in (0, 1] (0.7 as in MMSegmentation) or None "
         "(keep exactly ohem_min_kept pixels per image)")
  if not isinstance(block.ohem_min_kept, int) or block.ohem_min_kept < 0:
    fail("loss.ohem_min_kept", block.ohem_min_kept, "give a pixel count per image >= 0 (MMSegmentation: 100000)")
  if block.ohem_thresh is None and block.ohem_weight and block.ohem_min_kept == 0:
    fail("loss.ohem_min_kept", block.ohem_min_kept, "with ohem_thresh=None OHEM keeps exactly ohem_min_kept "
         "pixels per image; give a count > 0")


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """config.loss, typed: each loss's weight (0 = off), per-class weights, auxiliary heads' weight, and the losses'
  parameters (segjax.losses_extra.total_loss reads them)."""
  ce_weight: float
  dice_weight: float
  class_weights: tuple[float, ...] | None
  aux_weight: float
  focal_weight: float = 0.0
  lovasz_weight: float = 0.0
  tversky_weight: float = 0.0
  jaccard_weight: float = 0.0
  ohem_weight: float = 0.0
  label_smoothing: float = 0.0
  dice_squared: bool = False
  focal_gamma: float = 2.0
  focal_alpha: float | None = None
  tversky_alpha: float = 0.5
  tversky_beta: float = 0.5
  tversky_gamma: float = 1.0
  ohem_thresh: float | None = 0.7
  ohem_min_kept: int = 100000


def settings(block: ml_collections.ConfigDict) -> LossSettings:
  """The typed form of a checked `config.loss`."""
  values = {f.name: block[f.name] for f in dataclasses.fields(LossSettings)}
  if values["class_weights"] is not None:
    values["class_weights"] = tuple(float(w) for w in values["class_weights"])
  return LossSettings(**values)
