"""Faster R-CNN (boxes only: Mask R-CNN without its mask head) on instance_shapes; the instance quickstart's
settings otherwise (configs/maskrcnn_quickstart.py). COCO box AP.

python train.py --config=configs/fasterrcnn_quickstart.py --workdir=runs/fasterrcnn_quickstart
"""

from segjax import config as config_lib
from segjax.tasks import instance


def get_config():
  c = config_lib.load_recipe(str(config_lib.resolve_recipe("maskrcnn_quickstart")))
  c.unlock()
  c.model = instance.model_config("faster_rcnn", **{k: v for k, v in c.model.items() if k != "name"})
  return config_lib.finalize(c)
