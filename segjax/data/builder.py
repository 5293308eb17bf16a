"""Pieces shared by the manual-dir tfds builders.

The builders (camvid, isbi2012, lfw_parts, voc2012, ade20k) keep their own
layout checks and label decoding; what lives here is the stored example format
and the checks that read the same for every dataset, and `raise_problems`, the
one error that lists every problem a preparation found (the COCO instance and
panoptic builders and the Cityscapes one call it).
`title` is the dataset's name as error messages give it ("CamVid"), `fix` the
sentence that says how to pass the files.
"""

import os
import pathlib
from typing import Sequence

import tensorflow_datasets as tfds

MAX_LISTED = 20  # problems listed by one preparation error (all are counted)


def raise_problems(errors: Sequence[str], what: str) -> None:
  """One ValueError listing every problem (up to MAX_LISTED), or nothing when there is none.

  `what` names the data in the message ("COCO data").
  """
  if len(errors) == 1:
    raise ValueError(f"{errors[0]} (Nothing was prepared.)")
  if errors:
    listed = "\n".join(f"  {i}. {e}" for i, e in enumerate(errors[:MAX_LISTED], 1))
    more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
    raise ValueError(f"{what}: {len(errors)} problems, nothing was prepared; fix them all, then run again:\n"
                     f"{listed}{more}")


def segmentation_features(
    num_channels: int, image_format: str) -> tfds.features.FeaturesDict:
  """The stored example: image, PNG label map of class ids, file stem.

  Args:
    num_channels: channels of the stored image (1 or 3).
    image_format: "png" or "jpeg", the encoding of the image bytes the builder
      yields (labels are always PNG).

  Returns:
    The FeaturesDict every segmentation builder here stores.
  """
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(
          shape=(None, None, num_channels), encoding_format=image_format),
      "label": tfds.features.Image(
          shape=(None, None, 1), encoding_format="png"),
      "filename": tfds.features.Text(),
  })


def segmentation_info(builder: tfds.core.GeneratorBasedBuilder, *,
                      num_channels: int, image_format: str, description: str,
                      homepage: str, citation: str) -> tfds.core.DatasetInfo:
  """DatasetInfo of a segmentation builder, with shuffling disabled.

  Records stay in the order the builder yields them (its split list or file
  order), so record i can be traced back to its source file.

  Args:
    builder: the builder whose `_info` this is.
    num_channels: channels of the stored image.
    image_format: "png" or "jpeg", as for `segmentation_features`.
    description: what the dataset holds and what its label ids mean.
    homepage: the dataset's web page.
    citation: the paper to cite.

  Returns:
    The DatasetInfo.
  """
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=segmentation_features(num_channels, image_format),
      supervised_keys=("image", "label"),
      homepage=homepage,
      citation=citation,
      disable_shuffling=True,
  )


def manual_dir_of(dl_manager, title: str, fix: str):
  """`dl_manager.manual_dir`, with tfds' assertion turned into a ValueError.

  Args:
    dl_manager: the DownloadManager given to `_split_generators`.
    title: the dataset's name in messages.
    fix: how to pass the files.

  Returns:
    The manual directory.

  Raises:
    ValueError: when tfds finds no manual directory (or an empty one).
  """
  try:
    return dl_manager.manual_dir
  except AssertionError as e:  # tfds' "does not exist or is empty".
    raise ValueError(f"{title}: {e}\n{fix}") from e


def manual_root(manual_dir, title: str, fix: str) -> pathlib.Path:
  """The manual directory as an existing directory's Path.

  Args:
    manual_dir: the directory given by the user, or None.
    title: the dataset's name in messages.
    fix: how to pass the files.

  Returns:
    The directory, with "~" expanded.

  Raises:
    ValueError: when manual_dir is None or not a directory.
  """
  if manual_dir is None:
    raise ValueError(f"{title} needs its files on disk: {fix}")
  root = pathlib.Path(os.fspath(manual_dir)).expanduser()
  if not root.is_dir():
    raise ValueError(
        f"{title} manual_dir {root} does not exist or is not a directory: "
        f"{fix}")
  return root


def archive_hint(root: pathlib.Path, archive: str, command: str) -> str:
  """A sentence for a layout error when `root` holds the unextracted archive.

  Args:
    root: the manual directory.
    archive: the archive's file name.
    command: the shell command that extracts it into root.

  Returns:
    " It holds <archive>: extract it (<command>)." or "" if there is no such
    file.
  """
  if not (root / archive).is_file():
    return ""
  return f" It holds {archive}: extract it ({command})."


def check_same_size(title: str, label_path: pathlib.Path, label_shape,
                    image_path: pathlib.Path, image_shape,
                    what: str = "label") -> None:
  """Raises unless a label map has its image's height and width.

  Args:
    title: the dataset's name in messages.
    label_path: the label file.
    label_shape: (height, width) of the label map.
    image_path: the image file.
    image_shape: (height, width) of the image.
    what: what the dataset calls a label file ("label", "annotation").

  Raises:
    ValueError: naming both files and their sizes.
  """
  label_shape, image_shape = tuple(label_shape), tuple(image_shape)
  if label_shape != image_shape:
    raise ValueError(
        f"{title} {what} {label_path} is {label_shape} but its image "
        f"{image_path} is {image_shape}.")
