"""Started with every process of a run (its folder is on the run's PYTHONPATH): makes
``from azureml.core import Run`` work when no real ``azureml`` is installed.

Python imports one ``sitecustomize``, the first on its path; this one then runs the one it
hides (Debian's, a venv's), so the interpreter behaves as it would without us. It never
stops the interpreter from starting.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _install_azureml_finder() -> None:
    try:
        from prefect_mltrain.compat_finder import install
    except Exception:  # prefect_mltrain is not importable here: nothing to answer with
        return
    install()


def _run_hidden_sitecustomize() -> None:
    here = os.path.dirname(os.path.realpath(__file__))
    path = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_install_azureml_finder()
_run_hidden_sitecustomize()
