"""Naming and finding compute targets: how a run record names its target, and how a name
(or a recorded target) becomes a ready target again.

Prefect-free at import: run records name targets in processes that never touch Prefect
(a local submit, a training script). Looking a saved target up loads its block.
"""

from __future__ import annotations

from typing import Any

from ..errors import ComputeTargetUnavailableError, ConfigurationError

BUILTIN = "local"  # this machine: never a saved block, never routed through a work pool
KINDS = {"local": "LocalCompute", "docker": "DockerCompute", "dask": "DaskCompute",
         "spark": "SparkCompute"}


def target_name(target: Any) -> str | dict[str, Any]:
    """How a run record names its compute target: ``"local"``, a saved target's
    ``"slug/name"``, or an unsaved target's type and settings (secret values masked)."""
    if isinstance(target, str | dict):
        return target
    name = getattr(target, "_block_document_name", None)
    slug = target.get_block_type_slug()
    if name:
        return f"{slug}/{name}"
    return {"block_type_slug": slug, "settings": target.model_dump(mode="json")}


def saved_target_name(recorded: Any) -> str | None:
    """``"gpu-box"`` for a saved target as a run record names it (``"gpu-box"`` or
    ``"mltrain-docker-compute/gpu-box"``); None for ``"local"`` and unsaved targets, which
    never have a work pool."""
    if not isinstance(recorded, str):
        return None
    name = recorded.rsplit("/", 1)[-1]
    return None if name in ("", BUILTIN) else name


def target_classes() -> list[type]:
    """Every compute target class (importing them registers their block types)."""
    from .blocks import DaskCompute, DockerCompute, LocalCompute, SparkCompute

    return [LocalCompute, DockerCompute, DaskCompute, SparkCompute]


def resolve_compute_target(target: Any) -> Any:
    """``"local"``, a saved target's name (``"mltrain-docker-compute/gpu-box"`` or
    ``"gpu-box"``), a recorded unsaved target, or a target object -> a ready target."""
    from prefect.blocks.core import Block

    from .blocks import LocalCompute

    if hasattr(target, "launch"):
        return target
    if target in (None, "", BUILTIN):
        return LocalCompute()
    if isinstance(target, dict):  # an unsaved target, recorded with its settings
        cls = Block.get_block_class_from_key(target["block_type_slug"])
        return cls.model_validate(target["settings"])
    name = str(target)
    candidates = [name] if "/" in name else [
        f"{cls.get_block_type_slug()}/{name}" for cls in target_classes()]
    for candidate in candidates:
        try:
            return Block.load(candidate)
        except (ValueError, KeyError):
            continue
    raise ComputeTargetUnavailableError(
        f"no compute target named {name!r}: use 'local', create one first (e.g. "
        "`mltrain compute create gpu-box --type docker`), or see `mltrain compute list`")


def from_options(kind: str, settings: dict[str, Any]) -> Any:
    """A target of ``kind`` (local | docker | dask | spark) from settings given at a terminal."""
    if kind not in KINDS:
        raise ConfigurationError(f"unknown target type {kind!r}: use one of {', '.join(KINDS)}")
    from . import blocks

    cls = getattr(blocks, KINDS[kind])
    unknown = set(settings) - set(cls.model_fields)
    if unknown:
        raise ConfigurationError(f"{kind} targets have no setting {', '.join(sorted(unknown))}")
    return cls(**settings)
