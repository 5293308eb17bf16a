"""Your own instance data: Mask R-CNN (ResNet-50-FPN) on folders of images and instance-id mask PNGs (Penn-Fudan
layout: one id per object, 0 background), the folders and classes from flags.

python train.py --config=configs/maskrcnn_folder.py --workdir=runs/pennfudan \
    --config.instance.dataset.images_dir=PennFudanPed/PNGImages --config.instance.dataset.masks_dir=PennFudanPed/PedMasks \
    --config.instance.dataset.name=pennfudan --config.init_from.path=resnet50-0676ba61.pth
python eval.py --config=configs/maskrcnn_folder.py --workdir=runs/pennfudan <the same flags> --split=validation

Without a class table every object is one class ("object"); `--config.instance.dataset.id_classes` (a mapping of
ids to class names for every image) or `classes_dir` (a <stem>.json / .csv per image) name classes. The
validation split is a seeded 10% of the images (`validation_fraction`) unless `split_files` lists them.
segjax.data.instance.id_masks documents every key. Images are resized to fit 512x512 (aspect kept) and jittered
by 0.5..1.5 on device; evaluation resizes likewise and scores in the stored images' pixels.
"""

from segjax import config as config_lib
from segjax.tasks import instance


def get_config():
  c = config_lib.default_config()
  c.task = "instance"
  c.dataset.name = "instance_folder"
  c.dataset.crop_size = (512, 512)
  c.dataset.eval_size = (512, 512)
  c.dataset.mean = (123.675, 116.28, 103.53)
  c.dataset.std = (58.395, 57.12, 57.375)
  c.dataset.check_labels = False
  c.dataset.worker_count = 2
  c.augment.hflip_prob = 0.0
  c.instance.max_instances = 32
  c.instance.hflip_prob = 0.5
  c.instance.scale_range = (0.5, 1.5)
  c.instance.eval_resize = True
  c.eval_split = "validation"
  c.model = instance.model_config("mask_rcnn", backbone="resnet50", frozen_bn=True, trainable_layers=3)
  c.num_train_steps, c.batch_size, c.eval_batch_size = 3000, 4, 4
  c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 20, 500, 1000
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.005, 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule, c.optimizer.warmup_steps = "step", 100
  c.optimizer.boundaries, c.optimizer.decay_factor = (2000,), 0.1
  return config_lib.finalize(c)
