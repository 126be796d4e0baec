"""Datasets, standard augmentation and deterministic batch streams.

``load_data(source)`` gives a ``DataBundle`` (``formats``): digits, CIFAR python batches,
MNIST IDX and .npz are held in memory (``ImageSet``); image folders, ImageNet's layout
included, are read lazily (``FolderSet``: file names and labels in memory, pixels decoded
per item). ``BatchLoader`` / ``BatchStream`` (``loader``) turn a set into batches that are a
pure function of ``(seed, stream, epoch, batch index)``, with optional DataLoader workers.
"""

from das.data.formats import FORMATS, NPZ_LAYOUT, STATS_IMAGES, DataBundle, detect_format, load_data
from das.data.loader import BatchLoader, BatchStream, augment_batch
from das.data.sets import FOLDER_LAYOUT, IMAGE_EXTS, DataError, FolderSet, ImageSet

__all__ = [
    "FOLDER_LAYOUT",
    "FORMATS",
    "IMAGE_EXTS",
    "NPZ_LAYOUT",
    "STATS_IMAGES",
    "BatchLoader",
    "BatchStream",
    "DataBundle",
    "DataError",
    "FolderSet",
    "ImageSet",
    "augment_batch",
    "detect_format",
    "load_data",
]
