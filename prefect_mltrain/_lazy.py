"""Lazy re-exports, so importing a package (e.g. inside a training script) stays cheap."""

from importlib import import_module


def lazy_exports(package: str, namespace: dict, exports: dict[str, str]):
    """A module ``__getattr__`` that imports ``exports[name]`` (a submodule) on first use."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    return __getattr__
