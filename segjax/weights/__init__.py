"""Pretrained backbone weights: Keras `.h5` (keras-applications layout) and torchvision state dicts (`.pth`, `.pt`,
`.safetensors`) loaded into a segjax model's VGG16 / ResNet backbone. docs/weights.md says where to get the files.

Modules: `formats` checks `config.init_from` and gives the normalisation the weights expect (no file read);
`files` reads the files; `mapping` turns their names and layouts into segjax's; `load` loads them into a model.

Conventions handled (each exact, except the grayscale one):
- Layouts: torch's OIHW kernels become HWIO; BatchNorm weight/bias/running_mean/running_var become
  params scale/bias and batch_stats mean/var; Keras kernels are already HWIO.
- Colour order: Keras (Caffe-converted) networks take BGR. The first convolution's input-channel axis is flipped,
  so every segjax model takes RGB; `input_normalization` gives the matching mean/std in RGB order.
- Keras ResNet50/101 are ResNet v1 ("caffe" style): stride in the first 1x1 convolution (the model needs
  `stride_in_1x1=True`), a bias on every convolution and BN epsilon 1.001e-5. A bias b before a BN (mean m,
  variance v, epsilon 1.001e-5) is the same function as no bias and a BN with mean m - b, variance
  v + 1.001e-5 - 1e-5 and segjax's epsilon 1e-5: that is what is stored.
- Grayscale datasets (1 channel): the first convolution's kernel is summed over its 3 input channels (a gray
  image seen as R = G = B, as timm's `adapt_input_conv`), and the normalisation is the mean of the 3 channels'.
  This is an approximation where the channels' means/stds differ (they do, slightly).

The file's architecture is read from its keys and must be the model's (a VGG16 file may also initialise the
convolutions of a VGG16-BN model, whose BatchNorms then stay at their initialisation, as SegNet was trained).
Every array's shape is checked against the model; nothing is loaded partially without being reported.

VGG16 files with the classifier (torchvision's always; Keras' `include_top` ones) also give fc6/fc7, VGG16's
first two fully connected layers as 7x7 and 1x1 convolutions (the FCN paper's "convolutionalization"; the 25088
inputs of fc6 are pool5's 7x7x512, flattened channels-last by Keras and channels-first by torch). They are
loaded beside the backbone where the model has `fc6`/`fc7` of exactly those shapes (FCN, DeconvNet) and
otherwise left at initialisation and listed in the report (DeepLab's fc6 is a 3x3 of 1024 channels).
"""

from segjax.weights.files import read_keras_h5, read_torch, read_weights
from segjax.weights.formats import (ARCHITECTURES, CAFFE_MEAN_RGB, FORMATS, IMAGENET_MEAN, IMAGENET_STD,
                                    check_config, input_normalization, resolve_format)
from segjax.weights.load import LoadReport, find_target, load_into, model_architecture
from segjax.weights.mapping import RESNET_DEPTHS, FileWeights

__all__ = [
    "ARCHITECTURES", "CAFFE_MEAN_RGB", "FORMATS", "IMAGENET_MEAN", "IMAGENET_STD", "RESNET_DEPTHS", "FileWeights",
    "LoadReport", "check_config", "find_target", "input_normalization", "load_into", "model_architecture",
    "read_keras_h5", "read_torch", "read_weights", "resolve_format",
]
