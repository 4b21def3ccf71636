"""Data of runs: datastores, datasets, data references in arguments, and their staging."""

from .dataset import Dataset, FileDataset, TabularDataset
from .datastore import Datastore
from .references import DataReference, DatasetConsumptionConfig, OutputFileDatasetConfig

__all__ = ["DataReference", "Dataset", "DatasetConsumptionConfig", "Datastore", "FileDataset",
           "OutputFileDatasetConfig", "TabularDataset"]
