"""Harmonization datasets: layouts (iHarmony4 / RPHarmony / image+mask folders), the atomic
dataset writer and the ``make-dataset`` generator run.

    from r2r.dataset import HarmonizationDatasetWriter, read_split, make_dataset, MakeConfig
"""

from .layouts import (
    HarmonizationSample,
    SourceItem,
    detect_layout,
    find_sources,
    read_split,
    subset_from_name,
)
from .make import MakeConfig, MakeReport, make_dataset
from .writer import HarmonizationDatasetWriter, rebuild_indexes

__all__ = [
    "HarmonizationDatasetWriter",
    "HarmonizationSample",
    "MakeConfig",
    "MakeReport",
    "SourceItem",
    "detect_layout",
    "find_sources",
    "make_dataset",
    "read_split",
    "rebuild_indexes",
    "subset_from_name",
]
