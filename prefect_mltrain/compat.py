"""Azure ML SDK v1 imports in your own code: ``import prefect_mltrain.compat`` first.

Then a v1 notebook or submit script works with its imports as they are::

    import prefect_mltrain.compat  # noqa: F401  (the only line a v1 project adds)
    from azureml.core import Workspace, Experiment, ScriptRunConfig, Environment

Nothing is installed anywhere: a finder placed after the normal ones answers for
``azureml`` in this interpreter only, and a real ``azureml`` package, where installed,
wins. Training scripts need no such line: every submitted run has the finder already.
A name prefect-mltrain does not provide is an ``ImportError`` that says what exists.
"""

from .compat_finder import install

install()
