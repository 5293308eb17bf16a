"""SMP's Unet layout with a ResNet-34 encoder on CamVid, reduced for a 2-core CPU: half resolution, half the
encoder width and decoder channels (6.1 M parameters), 4200 steps: the wall time of configs/unet_camvid_cpu.py.

python train.py --config=configs/unet_r34_camvid_cpu.py --workdir=runs/unet_r34_camvid_cpu
python eval.py --config=configs/unet_r34_camvid_cpu.py --workdir=runs/unet_r34_camvid_cpu --split=validation

As configs/unet_camvid_cpu.py: frames are resized to half size on the host (0.4..0.6 scale jitter) and cropped to
160x224 (multiples of 32, the encoder's output stride); evaluation resizes the whole frames by 0.5
(`inference.scales`), pads them to a multiple of 32, resizes the scores back and scores every labelled
full-resolution pixel, so the metrics compare with the full-resolution recipe (configs/unet_r34_camvid.py).

Where it departs from unet_camvid_cpu besides the network: no median-frequency class weights (they paint thin rare
classes far beyond their objects) but cross-entropy + soft Dice (nnU-Net's pair: Dice averages over classes, with
no per-pixel weight; Lovász-softmax was the first choice, but its per-class sort of every pixel ran the training
step at 1.0 instead of 2.5 steps/s on the 2 cores); MMSegmentation's
PhotoMetricDistortion (brightness, contrast, saturation, hue, each with probability 0.5); an exponential moving
average of the weights (decay 0.999) for evaluation. BENCHMARKS.md ("Choosing a CPU recipe by held-out drives")
measures it against unet_camvid_cpu on val and on a held-out drive: trained on drives 0006R0 + 0016E5 and scored
on 0001TP (dusk), mIoU 35.24 against 22.55; on val 58.76 against 60.98 (pole and sign-symbol, thin and rare, drop
to 0.7 and 6.1 IoU without class weights). PhotoMetricDistortion is what wins the held-out drive: without it
this recipe scores 11.48 there. 27 min 38 s for the val run on the idle 2 cores.
Half width means torchvision's ImageNet ResNet-34 does not load here; the full-width recipe takes it.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("smp_unet", encoder="resnet34", encoder_width=32,
                                decoder_channels=(128, 64, 32, 16, 8))
  c.dataset.train_scale = (0.4, 0.6)
  c.dataset.crop_size = (160, 224)
  c.dataset.eval_size = (384, 480)
  c.inference.scales = (0.5,)
  c.loss.ce_weight = 1.0
  c.loss.dice_weight = 1.0
  # MMSegmentation's PhotoMetricDistortion: brightness +-32 grey levels, contrast and saturation x0.5..1.5, hue
  # +-18 (OpenCV units), each with probability 0.5.
  c.augment.brightness = 32 / 255
  c.augment.brightness_prob = 0.5
  c.augment.contrast = 0.5
  c.augment.contrast_prob = 0.5
  c.augment.saturation = (0.5, 1.5)
  c.augment.hue_delta = 18.0
  c.ema.decay = 0.999
  c.ema.warmup = True
  c.num_train_steps = 4200
  c.eval_batch_size = 8
  c.keep_checkpoints = 4
  c.eval_every_steps = 0
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 1e-4
  return config_lib.finalize(c)
