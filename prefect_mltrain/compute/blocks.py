"""Every compute target block type, imported.

This is the package's ``prefect.collections`` entry point: Prefect imports it before it
looks a block type up by slug, so a recorded or saved target resolves in any process
(a fresh runner, a worker) and the server lists the types in its block catalog.
"""

from .dask import DaskCompute
from .docker import DockerCompute
from .local import LocalCompute
from .spark import SparkCompute

__all__ = ["DaskCompute", "DockerCompute", "LocalCompute", "SparkCompute"]
