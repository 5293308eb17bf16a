"""Backbone networks that return multi-scale feature maps for segmentation heads."""
