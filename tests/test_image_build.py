"""Environments as Docker images, with a real engine (skips with a reason without one)."""

from __future__ import annotations

import uuid

import pytest
from conftest import BASE_IMAGE

from prefect_mltrain import ComputeTargetUnavailableError, EnvironmentBuildError
from prefect_mltrain.environment import Environment
from prefect_mltrain.image_build import build_image, docker_client

pytestmark = pytest.mark.timeout(600)


def _image_env(*packages, dockerfile=None):
    env = Environment("img")
    env.docker.base_image = None if dockerfile else BASE_IMAGE
    env.docker.base_dockerfile = dockerfile
    env.docker.build_args = {"MLTRAIN_TEST_NONCE": uuid.uuid4().hex}  # a fresh tag per test
    for package in packages:
        env.python.conda_dependencies.add_pip_package(package)
    return env


def test_image_is_built_tagged_reused_and_runs_the_script(docker_engine, tmp_path):
    env = _image_env("six")
    lines = []
    built = build_image(env.build_spec(), client=docker_engine, on_line=lines.append)
    try:
        assert not built.cached and built.tag.startswith("mltrain-env:")
        assert any("Successfully tagged" in line for line in lines)  # the log streamed
        assert "six==" in built.lock
        (tmp_path / "train.py").write_text("import six, sys\nprint(six.__name__, sys.prefix)\n")
        out = docker_engine.containers.run(
            built.tag, ["python", "/work/train.py"], remove=True, network_mode="host",
            volumes={str(tmp_path): {"bind": "/work", "mode": "ro"}})
        assert out.decode().strip() == "six /opt/mltrain/venv"
        image = docker_engine.images.get(built.tag)
        assert image.labels["mltrain.spec_hash"] == env.spec_hash()
        again = build_image(env.build_spec(), client=docker_engine)
        assert again.cached and again.tag == built.tag
    finally:
        docker_engine.images.remove(built.tag, force=True)


def test_dockerfile_that_does_not_build_is_a_clear_error(docker_engine):
    env = _image_env(dockerfile=f"FROM {BASE_IMAGE}\nRUN echo broken-step && exit 3")
    with pytest.raises(EnvironmentBuildError, match="returned a non-zero code: 3"):
        build_image(env.build_spec(), client=docker_engine)


def test_unreachable_engine_names_the_address_and_the_fix():
    with pytest.raises(ComputeTargetUnavailableError, match="tcp://127.0.0.1:9.*Start the engine"):
        docker_client("tcp://127.0.0.1:9", timeout=3)


def test_image_needs_a_base():
    with pytest.raises(EnvironmentBuildError, match="docker.base_image"):
        build_image(Environment("plain").build_spec())
