"""Two-stage detection and instance segmentation: Mask R-CNN (He, Gkioxari, Dollar, Girshick, ICCV 2017) on a
ResNet-FPN backbone (Lin et al., CVPR 2017), Faster R-CNN (Ren et al., NeurIPS 2015) as the same model without
the mask head, computed as torchvision's `maskrcnn_resnet50_fpn` computes it, with static shapes under jit.

- fpn.py: the feature pyramid on segjax's ResNet (and a small backbone for CPU recipes);
- rpn.py: the region proposal network and its fixed-count proposals;
- roi_heads.py: the box head, the mask head and the detections' post-processing;
- targets.py, losses.py: anchor / RoI matching and sampling, the training targets and losses;
- mask_rcnn.py: the model.
"""
