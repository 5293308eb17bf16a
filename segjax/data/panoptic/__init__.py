"""Panoptic segmentation data: the stored example every panoptic builder writes (features), the generated
panoptic_shapes dataset (shapes), COCO panoptic (coco) and Cityscapes-style instance-id maps (cityscapes) as tfds
builders, the registry that names them, and the host transforms into batch fields (pipeline)."""
