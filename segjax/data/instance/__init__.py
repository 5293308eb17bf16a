"""Instance segmentation data (issue 22): tfds builders with per-instance masks, host transforms, augmentation.

One job per module:
  features  the stored example every builder writes (image, image_id, filename, objects: mask, bbox, label,
            is_crowd) and `decode`, which reads it back as arrays;
  shapes    "instance_shapes", the generated dataset of overlapping shapes (no download);
  coco      COCO-format annotations (images folder + instances JSON; polygons, RLE, iscrowd), checked before
            anything is written;
  id_masks  folders of instance-id mask PNGs (Penn-Fudan style) with an optional class table;
  registry  names -> builders, specs (classes, palette, COCO category ids, largest instance count), sources;
  pipeline  host transforms: stored example -> fixed-shape training / eval fields, padded to max_instances;
  augment   device augmentation (flip, scale jitter, crop) that recomputes boxes from masks and drops emptied
            instances.
"""
