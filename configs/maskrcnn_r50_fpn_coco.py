"""Mask R-CNN, ResNet-50-FPN, COCO 2017, the 1x schedule (He et al. 2017; torchvision's and Detectron2's
maskrcnn_R_50_FPN_1x): 90k steps at batch 16, SGD lr 0.02 (momentum 0.9, weight decay 1e-4), linear warm-up over
1000 steps, x0.1 at 60k and 80k; frozen BatchNorm, stem and layer1 frozen (trainable_backbone_layers=3);
horizontal flips; torchvision's proposal and RoI counts (2000/1000 per level before NMS, 2000/1000 after; 512
RoIs, 25% positives; 100 detections).

python train.py --config=configs/maskrcnn_r50_fpn_coco.py --workdir=runs/maskrcnn_coco \
    --config.dataset.manual_dir=/data/coco --config.init_from.path=resnet50-0676ba61.pth
python eval.py --config=configs/maskrcnn_r50_fpn_coco.py --workdir=runs/maskrcnn_coco \
    --config.dataset.manual_dir=/data/coco --split=validation

manual_dir holds COCO 2017's layout (train2017/, val2017/, annotations/instances_{train,val}2017.json); it is
prepared once into array_record files (every check of the annotations runs before anything is written). The
backbone starts from torchvision's ImageNet ResNet-50 (`init_from`), as the paper's and torchvision's do.

Static shapes, where torchvision resizes each image (shorter side 800, longer at most 1333) and pads each batch
to its largest image: images are resized to fit 800x1344 keeping their aspect ratio and padded to it, which
gives landscape images torchvision's size and portrait ones a shorter side of 600. Ground-truth masks are full
images (100 x 800 x 1344 bytes per image): host memory and transfer scale with max_instances.
"""

from segjax import config as config_lib
from segjax.tasks import instance


def get_config():
  c = config_lib.default_config()
  c.task = "instance"
  c.dataset.name = "coco"
  c.dataset.manual_dir = "../data/coco"
  c.dataset.crop_size = (800, 1344)
  c.dataset.eval_size = (800, 1344)
  # torchvision's ImageNet normalisation, in 0..255 units.
  c.dataset.mean = (123.675, 116.28, 103.53)
  c.dataset.std = (58.395, 57.12, 57.375)
  c.dataset.check_labels = False
  c.dataset.worker_count = 8
  c.augment.hflip_prob = 0.0  # the instance task flips images with their masks and boxes
  c.instance.max_instances = 100  # COCO 2017 train holds up to 93 annotations in an image (crowd included)
  c.instance.hflip_prob = 0.5
  c.instance.eval_resize = True  # scored in the stored images' pixels, as COCO's evaluation does
  c.eval_split = "validation"
  c.model = instance.model_config("mask_rcnn", backbone="resnet50", frozen_bn=True, trainable_layers=3)
  c.num_train_steps, c.batch_size, c.eval_batch_size = 90000, 16, 16
  c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 100, 5000, 10000
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.02, 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule, c.optimizer.warmup_steps = "step", 1000
  c.optimizer.boundaries, c.optimizer.decay_factor = (60000, 80000), 0.1
  return config_lib.finalize(c)
