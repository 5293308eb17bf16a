"""Panoptic FPN, ResNet-50-FPN, COCO 2017 panoptic, the 1x schedule (Kirillov et al. 2019; Detectron2's
panoptic_fpn_R_50_1x): the Mask R-CNN of configs/maskrcnn_r50_fpn_coco.py (90k steps at batch 16, SGD lr 0.02,
momentum 0.9, weight decay 1e-4, warm-up 1000 steps, x0.1 at 60k and 80k; frozen BN, trainable_backbone_layers=3;
torchvision's proposal and RoI counts) plus Detectron2's semantic branch (128 channels, GroupNorm, 53 stuff
classes + "things"), joint loss 1.0 x instance + 0.5 x semantic, and Detectron2's fusion (overlap 0.5, stuff
area 4096 px, instance score 0.5).

python train.py --config=configs/panoptic_fpn_r50_coco.py --workdir=runs/panoptic_coco \
    --config.dataset.manual_dir=/data/coco --config.init_from.path=resnet50-0676ba61.pth
python eval.py --config=configs/panoptic_fpn_r50_coco.py --workdir=runs/panoptic_coco \
    --config.dataset.manual_dir=/data/coco --split=validation

manual_dir holds COCO 2017's panoptic layout (train2017/, val2017/, annotations/panoptic_{train,val}2017.json and
the PNG folders annotations/panoptic_{train,val}2017/); it is prepared once into array_record files, every PNG
checked against its segments_info before anything is written. Images are resized to fit 800x1344 and padded, as
in the Mask R-CNN recipe; evaluation maps predictions back to the stored images, as COCO's panoptic evaluation
scores them.
"""

from segjax import config as config_lib
from segjax.tasks import panoptic


def get_config():
  c = config_lib.load_recipe(str(config_lib.resolve_recipe("maskrcnn_r50_fpn_coco")))
  c.unlock()
  c.task = "panoptic"
  c.dataset.name = "coco_panoptic"
  # COCO panoptic's thing segments per image (crowd included) stay under COCO instances' 93.
  c.instance.max_instances = 100
  c.model = panoptic.model_config(backbone="resnet50", frozen_bn=True, trainable_layers=3)
  return config_lib.finalize(c)
