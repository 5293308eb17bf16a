"""Custom data from an images folder and a masks folder, as a tfds builder.

  <images_dir>/<stem>.{png,jpg,jpeg,bmp,tif,tiff,gif}   any size, any case
  <masks_dir>/<stem>.{png,bmp,tif,tiff,gif}             same stems and sizes
                                                        (+ jpg for rgb masks)
  <validity_dir>/<stem>.{png,bmp,tif,tiff,gif}          optional: 0 = invalid

Files are matched by stem; hidden files, sub-folders and other extensions are
skipped. Masks are either class-id maps ("index": the pixel value is the class
id, `ignore_index` means "not labelled") or colour-coded ("rgb": the nearest
`palette` colour within `palette_tolerance` gives the class). A pixel farther
than that from every colour is an error naming the mask and its colours, or,
with `off_palette="ignore"`, not labelled. The stored label holds class ids
0..N-1 and IGNORE_LABEL (255) wherever a pixel is not labelled, off the
palette (when ignored) or outside the validity mask. `label_map` maps raw
index-mask values to class ids first (binary 0/255 masks: ((255, 1),)).

Images and masks are turned upright by their EXIF orientation (as PIL's
ImageOps.exif_transpose) and images converted to num_channels by
png.to_channels, which predict.py shares.

Every image, mask and validity mask is fully decoded while preparing, so an
unreadable or truncated file is an error naming it (segjax.data.png.open_image)
instead of a grey or partial image in the prepared copy. Preparation reads
every file before failing, and one error lists every bad file (up to
MAX_LISTED); tfds writes into a temporary folder that a failure removes, so
nothing is left that a later run would take as prepared.

The tfds config name is `<name>-<hash8>`, the hash covering every parameter
(paths resolved) and the size and mtime of every source file: changing either
prepares afresh under data_dir instead of reusing stale data. Old prepared
copies stay in <data_dir>/segjax_folder/ until deleted.

One job per module: params (FolderParams, their checks, the config block), files (pairing files by stem,
splits), read (decoding images and masks into stored examples), builder (the tfds builder and the registry's
spec). This package re-exports their public names, so `folder.make_builder(...)` and the like keep working.
"""

from segjax.data.folder.builder import FolderConfig, SegjaxFolder, dataset_spec, make_builder
from segjax.data.folder.files import (IMAGE_EXTENSIONS, MASK_EXTENSIONS, MAX_LISTED, assign_splits,
                                      list_examples)
from segjax.data.folder.params import (FLAG, IGNORE_LABEL, MAX_CLASSES, NAME, FolderParams, check_params,
                                       config_block, derive_palette, params_from_config, spec_fields)
from segjax.data.folder.read import binary_mask_error, read_example, read_image, read_mask, rgb_to_ids

__all__ = [
    "FLAG", "IGNORE_LABEL", "IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "MAX_CLASSES", "MAX_LISTED", "NAME",
    "FolderConfig", "FolderParams", "SegjaxFolder", "assign_splits", "binary_mask_error", "check_params",
    "config_block", "dataset_spec", "derive_palette", "list_examples", "make_builder", "params_from_config",
    "read_example", "read_image", "read_mask", "rgb_to_ids", "spec_fields",
]
