"""Environments: declare, hash, register, build with uv, cache, fail clearly — real builds."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import write_script

from prefect_mltrain import EnvironmentBuildError, Experiment, ScriptRunConfig
from prefect_mltrain.environment import CondaDependencies, Environment
from prefect_mltrain.environment_build import build_environment

# -- the spec ---------------------------------------------------------------------------------


def _env(name, *packages, **kwargs):
    env = Environment(name, **kwargs)
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=list(packages))
    return env


def test_hash_ignores_name_version_order_and_spelling():
    a = _env("a", "Scikit_Learn>=1.0", "numpy")
    b = _env("b", "numpy", "scikit-learn >= 1.0", version="7")
    assert a.spec_hash() == b.spec_hash()
    assert a.spec_hash() != _env("c", "numpy", "scikit-learn>=1.1").spec_hash()
    c = _env("c", "numpy")
    c.docker.base_image = "python:3.11-slim"
    assert c.spec_hash() != _env("c", "numpy").spec_hash()


def test_from_pip_requirements_follows_includes_and_keeps_options(tmp_path):
    (tmp_path / "base.txt").write_text("numpy==2.0  # pinned\n")
    (tmp_path / "req.txt").write_text(
        "# ml\n-r base.txt\n--extra-index-url https://example.org/simple\nscikit-learn\n\n")
    env = Environment.from_pip_requirements("sk", tmp_path / "req.txt")
    deps = env.python.conda_dependencies
    assert deps.pip_packages == ["numpy==2.0", "scikit-learn"]
    assert deps.pip_options == ["--extra-index-url https://example.org/simple"]


def test_from_conda_specification_reads_python_conda_and_pip(tmp_path):
    (tmp_path / "environment.yml").write_text(
        "name: x\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n"
        "  - libgomp\n  - pip:\n    - scikit-learn==1.5.0\n    - --index-url https://i/simple\n")
    env = Environment.from_conda_specification("sk", tmp_path / "environment.yml")
    assert env.python.python_version == "3.11"
    deps = env.python.conda_dependencies
    assert deps.channels == ["conda-forge"] and deps.conda_packages == ["libgomp"]
    assert deps.pip_packages == ["scikit-learn==1.5.0"]
    assert deps.pip_options == ["--index-url https://i/simple"]


def test_save_and_load_never_write_secret_values(tmp_path):
    env = _env("sk", "numpy", environment_variables={"A": "1"})
    env.secret_environment_variables = {"TOKEN": "hunter2"}
    env.save_to_directory(tmp_path / "e")
    assert "hunter2" not in (tmp_path / "e" / "environment.json").read_text()
    assert (tmp_path / "e" / "requirements.txt").read_text() == "numpy\n"
    loaded = Environment.load_from_directory(tmp_path / "e")
    assert loaded.spec_hash() == env.spec_hash() and loaded.environment_variables == {"A": "1"}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        env.save_to_directory(tmp_path / "e")


def test_register_versions_and_get(ws):
    assert _env("sk", "numpy").register(ws).version == "1"
    assert _env("sk", "numpy").register(ws).version == "1"  # same spec: same version
    assert _env("sk", "numpy", "scipy").register(ws).version == "2"
    assert Environment.get(ws, "sk").python.conda_dependencies.pip_packages == ["numpy", "scipy"]
    assert Environment.get(ws, "sk", version=1).python.conda_dependencies.pip_packages == [
        "numpy"]
    with pytest.raises(Exception, match="no environment 'nope'.*env.register"):
        Environment.get(ws, "nope")
    listed = Environment.list(ws)
    assert {"sk", "mltrain-minimal", "mltrain-sklearn", "mltrain-pytorch-cpu"} <= set(listed)


def test_curated_environments_need_no_registration():
    env = Environment.get(None, "mltrain-sklearn")
    assert env.name == "mltrain-sklearn"
    assert any(p.startswith("scikit-learn") for p in env.python.conda_dependencies.pip_packages)
    assert Environment.get(None, "mltrain-pytorch-cpu").python.conda_dependencies.pip_packages[
        0] == "torch==2.13.0"


# -- building ---------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_build_caches_by_content_and_reordering_hits_the_cache():
    first = build_environment(_env("a", "six", "packaging==24.2").build_spec())
    assert not first.cached and "packaging==24.2" in first.lock and "six==" in first.lock
    again = build_environment(_env("b", "packaging==24.2", "six").build_spec())
    assert again.cached and again.interpreter == first.interpreter
    assert again.lock == first.lock
    import subprocess
    out = subprocess.run([first.interpreter, "-c", "import six, packaging; "
                          "print(packaging.__version__)"], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "24.2"


@pytest.mark.timeout(300)
def test_a_first_build_resolves_as_it_installs_and_its_scripts_work_where_it_lands():
    spec = _env("w", "wheel").build_spec()
    built = build_environment(spec)
    venv = Path(built.interpreter).parent.parent
    assert not built.cached and venv.name == built.build_key[:24]
    assert "wheel==" in built.lock and (venv / "mltrain-lock.txt").read_text() == built.lock
    assert not list(venv.parent.glob(".new-*"))  # the folder it was built in is gone
    import subprocess
    out = subprocess.run([str(venv / "bin" / "wheel"), "version"], capture_output=True,
                         text=True, timeout=60)  # a console script made before the move
    assert out.returncode == 0 and built.lock.split("wheel==")[1].split()[0] in out.stdout
    # the lock was kept: the next build of the spec installs exactly it, from its cache
    again = build_environment(spec)
    assert again.cached and again.lock == built.lock


def test_pip_settings_are_asked_once_and_again_when_a_file_or_variable_changes(
        tmp_path, monkeypatch):
    import subprocess

    from prefect_mltrain import pip_settings

    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://first.example/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    asked = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: (asked.append(argv),
                                                                real_run(argv, **kw))[1])

    def settings():
        pip_settings.pip_config.cache_clear()  # as a new process would
        return pip_settings.pip_config()

    assert settings()["index-url"] == "https://first.example/simple"
    assert settings()["index-url"] == "https://first.example/simple"
    assert len(asked) == 1  # the second process took pip's answer from $MLTRAIN_HOME
    conf.write_text("[global]\nindex-url = https://second.example/simple\n")
    assert settings()["index-url"] == "https://second.example/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://third.example/simple")
    assert settings()["index-url"] == "https://third.example/simple"
    assert len(asked) == 3
    pip_settings.pip_config.cache_clear()


@pytest.mark.timeout(300)
def test_cache_miss_says_what_differs():
    build_environment(_env("a", "six").build_spec())
    other = build_environment(_env("b", "six", "packaging==24.1").build_spec())
    assert not other.cached and "+packaging==24.1" in other.miss_reason


@pytest.mark.timeout(300)
def test_concurrent_builds_of_one_environment_build_once():
    results = []
    env = _env("c", "six", "idna==3.7")
    spec = env.build_spec()
    threads = [threading.Thread(target=lambda: results.append(build_environment(spec)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert len(results) == 3 and len({r.interpreter for r in results}) == 1
    assert sum(not r.cached for r in results) == 1


@pytest.mark.timeout(120)
def test_bogus_package_fails_fast_with_the_resolvers_message():
    with pytest.raises(EnvironmentBuildError, match="not found in the package registry"):
        build_environment(_env("bad", "no-such-package-mltrain-zz9").build_spec())


@pytest.mark.timeout(120)
def test_conflicting_requirements_fail_with_the_resolvers_explanation():
    with pytest.raises(EnvironmentBuildError, match="requirements are unsatisfiable") as err:
        build_environment(_env("clash", "numpy<2", "numpy>=2").build_spec())
    assert "numpy" in str(err.value)


def test_conda_packages_without_conda_are_a_clear_error():
    env = Environment("c")
    env.python.conda_dependencies.add_conda_package("libgomp")
    with pytest.raises(EnvironmentBuildError, match="need conda, mamba or micromamba"):
        build_environment(env.build_spec())


# -- runs -------------------------------------------------------------------------------------

SKLEARN_SCRIPT = """
    import sklearn
    from prefect_mltrain import Run
    Run.get_context().log("sklearn_version", sklearn.__version__)
"""


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(600)
def test_run_with_scikit_learn_from_requirements_then_cache_hit(ws, tmp_path):
    proj = tmp_path / "p"
    write_script(proj, "train.py", SKLEARN_SCRIPT)
    (proj / "requirements.txt").write_text("scikit-learn\n")
    env = Environment.from_pip_requirements("sk", proj / "requirements.txt")
    exp = Experiment(ws, "env")
    config = ScriptRunConfig(source_directory=proj, script="train.py", environment=env)
    first = exp.submit(config).wait_for_completion()
    build = first["environment_build"]
    assert "scikit-learn==" in build["lock"]
    cache = Path(os.environ["MLTRAIN_HOME"]) / "cache" / "envs"  # a built venv, not this Python
    assert Path(build["interpreter"]).is_relative_to(cache) and Path(build["interpreter"]).exists()
    assert not build["cached"]
    second = exp.submit(config).wait_for_completion()
    assert second["environment_build"]["cached"] is True
    assert second["environment_build"]["lock"] == build["lock"]
    runs = exp.get_runs()
    assert all(r.get_metrics()["sklearn_version"] for r in runs)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_run_with_bogus_package_fails_in_preparing_with_build_log(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    env = _env("bad", "no-such-package-mltrain-zz9")
    run = Experiment(ws, "env-bad").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                           script="train.py", environment=env))
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["error"].startswith("Preparing:")
    assert "not found in the package registry" in details["error"]
    assert [h["status"] for h in details["status_history"]][-2:] == ["Preparing", "Failed"]
    log = run.download_file("logs/environment_build.log", tmp_path / "b.log").read_text()
    assert "no-such-package-mltrain-zz9" in log


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(600)
def test_sklearn_estimator_runs_like_its_script_run_config(ws, tmp_path):
    from prefect_mltrain import SKLearn

    proj = tmp_path / "p"
    write_script(proj, "train.py", SKLEARN_SCRIPT + """
    import sys
    Run.get_context().log("alpha", float(sys.argv[sys.argv.index("--alpha") + 1]))
    """)
    estimator = SKLearn(source_directory=proj, entry_script="train.py",
                        script_params={"--alpha": 0.5})
    details = Experiment(ws, "estimator").submit(estimator).wait_for_completion()
    assert details["config"] == estimator.to_script_run_config().model_dump(mode="json")
    assert "scikit-learn==" in details["environment_build"]["lock"]
    run = Experiment(ws, "estimator").get_runs()[0]
    metrics = run.get_metrics()
    assert metrics["alpha"] == 0.5 and metrics["sklearn_version"]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(600)
def test_concurrent_runs_needing_one_new_environment_share_one_build(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", "import six\nprint('six', six.__version__)\n")
    env = _env("shared", "six", "idna==3.6")
    config = ScriptRunConfig(source_directory=tmp_path / "p", script="train.py", environment=env)
    exp = Experiment(ws, "env-shared")
    runs = [exp.submit(config) for _ in range(3)]
    builds = [r.wait_for_completion()["environment_build"] for r in runs]
    assert len({b["interpreter"] for b in builds}) == 1
    assert sorted(b["cached"] for b in builds) == [False, True, True]


def _processes_waiting_on(address):
    """Processes connected to ``address`` (host:port)."""
    import psutil

    port = int(address.rsplit(":", 1)[1])
    return sorted({c.pid for c in psutil.net_connections("tcp")
                   if c.raddr and c.raddr.port == port and c.pid})


def _hung_build(address):
    """An environment whose resolve waits on an index that never answers."""
    env = Environment("hung")
    env.python.conda_dependencies = CondaDependencies(
        pip_packages=["mltrain-never-published"],
        pip_options=[f"--index-url http://{address}/simple"])
    return env


@pytest.mark.timeout(180)
def test_a_cancel_during_the_build_stops_it_and_the_script_never_runs(
        ws, tmp_path, prefect_server, silent_address):
    write_script(tmp_path / "p", "t.py", "open('outputs/ran', 'w').close()\n")
    run = Experiment(ws, "hung").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="t.py", environment=_hung_build(silent_address)))
    deadline = time.monotonic() + 60
    while not _processes_waiting_on(silent_address):  # the resolver waits on the index
        assert time.monotonic() < deadline and run.get_status() not in ("Failed", "Canceled")
        time.sleep(0.2)

    run.cancel()
    details = run.wait_for_completion(raise_on_error=False, timeout=60)

    assert details["status"] == "Canceled", details
    assert "Running" not in [h["status"] for h in details["status_history"]]
    assert "outputs/ran" not in run.get_file_names()
    assert _processes_waiting_on(silent_address) == []


@pytest.mark.timeout(180)
def test_a_killed_runner_takes_its_build_down(ws, tmp_path, prefect_server, silent_address):
    write_script(tmp_path / "p", "t.py", "print('never')\n")
    run = Experiment(ws, "hung").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="t.py", environment=_hung_build(silent_address)))
    deadline = time.monotonic() + 60
    while not _processes_waiting_on(silent_address):
        assert time.monotonic() < deadline
        time.sleep(0.2)

    os.kill(ws.read_json(f"{run._dir}/heartbeat.json")["pid"], signal.SIGKILL)
    details = run.wait_for_completion(raise_on_error=False, timeout=60)

    assert details["status"] == "Failed" and "runner" in details["error"]
    deadline = time.monotonic() + 15  # the guard's grace
    while _processes_waiting_on(silent_address) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_waiting_on(silent_address) == []
