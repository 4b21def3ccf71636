"""Data inputs and outputs: datastores, datasets, ``as_download`` / ``as_mount`` /
``OutputFileDatasetConfig`` — on a local folder, in memory and on a real S3 API (moto on
loopback), read by runs on local compute, Docker and a real Dask cluster."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import BASE_IMAGE, write_script

from prefect_mltrain import (
    DataError,
    Dataset,
    Datastore,
    Experiment,
    OutputFileDatasetConfig,
    ScriptRunConfig,
    Workspace,
)

pytestmark = pytest.mark.timeout(240)


def make_files(folder: Path, count: int = 5) -> dict[str, str]:
    """A small tree: ``train/img<i>.png`` and ``labels.csv``; path -> content."""
    files = {f"train/img{i}.png": f"png-{i}" * 10 for i in range(count)}
    files["labels.csv"] = "name,label\n" + "".join(f"img{i},{i % 2}\n" for i in range(count))
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return files


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path, monkeypatch):
    """A workspace and a registered datastore ``raw`` on each kind of store (S3: with the
    credentials in the process's AWS variables, as an instance role would give them)."""
    ws = Workspace(tmp_path / "ws")
    unique = uuid.uuid4().hex[:10]
    if request.param == "local":
        return Datastore.register(ws, "raw", str(tmp_path / "raw"))
    if request.param == "memory":
        return Datastore.register(ws, "raw", f"memory://raw-{unique}")
    s3 = request.getfixturevalue("s3_workspace_options")
    options = dict(s3["storage_options"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options.pop("key"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options.pop("secret"))
    return Datastore.register(ws, "raw", f"s3://mltrain-test/raw-{unique}",
                              storage_options=options)


def test_default_datastore_is_the_workspaces_data_folder(ws):
    ds = ws.get_default_datastore()
    assert ds.name == "workspaceblobstore"
    assert ds.url == ws.path("data")
    assert [d.name for d in Datastore.list(ws)] == ["workspaceblobstore"]
    assert set(ws.datastores) == {"workspaceblobstore"}


def test_upload_and_download_keep_paths_and_existing_files(store, tmp_path):
    src = tmp_path / "src"
    files = make_files(src)
    ref = store.upload(src_dir=src, target_path="mnist", show_progress=False)
    assert (ref.datastore_name, ref.path_on_datastore) == ("raw", "mnist")
    (src / "labels.csv").write_text("changed")
    store.upload(src_dir=src, target_path="mnist", overwrite=False, show_progress=False)
    got = tmp_path / "got"
    assert store.download(got, prefix="mnist", show_progress=False) == len(files)
    assert {p.relative_to(got).as_posix(): p.read_text() for p in got.rglob("*")
            if p.is_file()} == {f"mnist/{k}": v for k, v in files.items()}  # not overwritten
    store.upload(src_dir=src, target_path="mnist", overwrite=True, show_progress=False)
    store.download(got, prefix="mnist", overwrite=True, show_progress=False)
    assert (got / "mnist/labels.csv").read_text() == "changed"


def test_upload_files_relative_to_a_root(ws, tmp_path):
    make_files(tmp_path / "src")
    ds = ws.get_default_datastore()
    ds.upload_files([tmp_path / "src/train/img1.png", tmp_path / "src/labels.csv"],
                    relative_root=tmp_path / "src", target_path="few", show_progress=False)
    assert sorted(ws.find("data/few")) == ["labels.csv", "train/img1.png"]
    with pytest.raises(DataError, match="not under relative_root"):
        ds.upload_files([tmp_path / "src/labels.csv"], relative_root=tmp_path / "src/train")


def test_registry_errors_name_the_fix(ws, tmp_path):
    with pytest.raises(DataError, match=r"no datastore 'nope'.*Datastore.register"):
        Datastore.get(ws, "nope")
    with pytest.raises(DataError, match="hold secrets.*Secret block"):
        Datastore.register(ws, "leaky", "s3://b/p", storage_options={"secret": "x"})
    Datastore.register(ws, "raw", str(tmp_path / "a"))
    with pytest.raises(DataError, match="already registered.*overwrite=True"):
        Datastore.register(ws, "raw", str(tmp_path / "b"))
    assert Datastore.register(ws, "raw", str(tmp_path / "b"), overwrite=True).url == str(
        tmp_path / "b")
    with pytest.raises(DataError, match="leaves the datastore"):
        ws.get_default_datastore().path("../../etc")
    with pytest.raises(DataError, match="invalid datastore name"):
        Datastore.register(ws, "bad name", str(tmp_path))


def test_a_dataset_version_pins_its_files(store, tmp_path):
    make_files(tmp_path / "src")
    store.upload(src_dir=tmp_path / "src", target_path="mnist", show_progress=False)
    ws = store.workspace
    files = Dataset.File.from_files(path=[(store, "mnist/train/*.png")])
    v1 = files.register(ws, "mnist")
    assert (v1.name, v1.version) == ("mnist", 1)
    assert sorted(f.rel for f in v1.files()) == [f"img{i}.png" for i in range(5)]
    assert files.register(ws, "mnist").version == 1  # the same files: the same version
    fs, root = store.filesystem()
    fs.pipe_file(f"{root}/mnist/train/img2.png", b"a different picture")
    with pytest.raises(DataError, match=r"mnist:1 no longer matches.*img2.png.*changed"):
        Dataset.get_by_name(ws, "mnist", 1).files()
    with pytest.raises(DataError, match="create_new_version=True"):
        Dataset.File.from_files(path=[(store, "mnist/train/*.png")]).register(ws, "mnist")
    v2 = Dataset.File.from_files(path=[(store, "mnist/train/*.png")]).register(
        ws, "mnist", create_new_version=True)
    assert v2.version == 2 and Dataset.get_by_name(ws, "mnist").version == 2
    assert len(v2.files()) == 5
    with pytest.raises(DataError, match="names no files"):
        Dataset.File.from_files(path=[(store, "mnist/nothing/*.png")])
    with pytest.raises(DataError, match="has no version 7"):
        Dataset.get_by_name(ws, "mnist", 7)


def test_tabular_dataset_to_pandas(ws, tmp_path):
    make_files(tmp_path / "src")
    ds = ws.get_default_datastore()
    ds.upload(src_dir=tmp_path / "src", show_progress=False)
    table = Dataset.Tabular.from_delimited_files(path=[(ds, "labels.csv")])
    frame = table.register(ws, "labels").to_pandas_dataframe()
    assert list(frame.columns) == ["name", "label"] and len(frame) == 5
    assert Dataset.get_by_name(ws, "labels").to_pandas_dataframe()["label"].sum() == 2


# -- runs --------------------------------------------------------------------------------------

READS_A_TABLE = """
    import json
    from prefect_mltrain import Run
    table = Run.get_context().input_datasets["scores"]
    frame = table.to_pandas_dataframe()
    json.dump({"rows": len(frame), "columns": list(frame.columns),
               "total": int(frame["score"].sum()), "path": str(table)},
              open("outputs/table.json", "w"))
"""


@pytest.mark.usefixtures("prefect_server")
def test_a_script_reads_a_tabular_input_as_a_table(ws, tmp_path):
    """v1's ``run.input_datasets[name].to_pandas_dataframe()`` in the script, on the
    dataset's own reader settings (here ``;``-separated, two files, one table)."""
    ds = ws.get_default_datastore()
    (tmp_path / "tables").mkdir()
    for i in range(2):
        (tmp_path / "tables" / f"part{i}.csv").write_text(
            f"name;score\na{i};{i + 1}\nb{i};{10 * (i + 1)}\n")
    ds.upload(src_dir=tmp_path / "tables", target_path="scores", show_progress=False)
    table = Dataset.Tabular.from_delimited_files(path=[(ds, "scores/*.csv")], separator=";")
    table = table.register(ws, "scores")
    write_script(tmp_path / "proj", "table.py", READS_A_TABLE)
    run = Experiment(ws, "tables").submit(ScriptRunConfig(
        tmp_path / "proj", "table.py", arguments=["--scores", table.as_named_input("scores")]))
    assert run.wait_for_completion(timeout=120)["status"] == "Completed"
    seen = json.loads(run.download_file("outputs/table.json", tmp_path / "t.json").read_text())
    assert seen["rows"] == 4 and seen["columns"] == ["name", "score"]
    assert seen["total"] == 1 + 10 + 2 + 20
    assert seen["path"].endswith("/scores")  # still the local path, for scripts that use it

READER = """
    import json, os, pathlib, sys
    from prefect_mltrain import Run
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    run = Run.get_context()
    def tree(path):
        p = pathlib.Path(path)
        if p.is_file():
            return p.read_text()
        return {f.relative_to(p).as_posix(): f.read_text() for f in sorted(p.rglob("*"))
                if f.is_file()}
    seen = {k: tree(v) for k, v in args.items() if k != "--out"}
    out = pathlib.Path(args["--out"])
    (out / "sub").mkdir(parents=True, exist_ok=True)
    (out / "sub" / "model.txt").write_text("trained on %d files" % len(seen["--down"]))
    json.dump({"seen": seen, "args": args, "named": run.input_datasets,
               "env": os.environ.get("AZUREML_DATAREFERENCE_raw"),
               "out_env": os.environ.get("model_out")}, open("outputs/seen.json", "w"))
"""


def _data_run(ws: Workspace, tmp_path: Path, target, store: Datastore | None = None):
    """A run reading a datastore folder by download and by mount, a single file, and a
    registered dataset as a named input (downloaded, and mounted: its files alone);
    writing an output registered as a dataset."""
    store = store or ws.get_default_datastore()
    files = Dataset.get_by_name(ws, "pics")
    out = OutputFileDatasetConfig(name="model_out", destination=(
        ws.get_default_datastore(), "models/{run-id}")).register_on_complete("model")
    src = ScriptRunConfig(tmp_path / "proj", "read.py", compute_target=target, arguments=[
        "--down", store.path("mnist", data_reference_name="raw").as_download(),
        "--mount", store.path("mnist/train", data_reference_name="mnt").as_mount(),
        "--file", store.path("mnist/labels.csv", data_reference_name="one").as_download(),
        "--named", files.as_named_input("pics").as_download(),
        "--named-mount", files.as_named_input("pics_view").as_mount(),  # a glob's matches
        "--out", out])
    run = Experiment(ws, "data").submit(src)
    run.wait_for_completion(timeout=200, raise_on_error=True)
    return run, json.loads(run.download_file("outputs/seen.json",
                                             tmp_path / f"{run.id}.json").read_text())


def _prepare(ws: Workspace, tmp_path: Path, store: Datastore | None = None) -> dict[str, str]:
    write_script(tmp_path / "proj", "read.py", READER)
    files = make_files(tmp_path / "src")
    store = store or ws.get_default_datastore()
    store.upload(src_dir=tmp_path / "src", target_path="mnist", show_progress=False)
    Dataset.File.from_files(path=[(store, "mnist/train/*.png")]).register(ws, "pics")
    return files


def _check(run, seen, files, ws):
    train = {k[len("train/"):]: v for k, v in files.items() if k.startswith("train/")}
    assert seen["seen"]["--down"] == {f"{k}": v for k, v in files.items()}
    assert seen["seen"]["--mount"] == train
    assert seen["seen"]["--file"] == files["labels.csv"]
    assert seen["seen"]["--named"] == seen["seen"]["--named-mount"] == train
    assert seen["named"] == {"pics": seen["args"]["--named"],
                             "pics_view": seen["args"]["--named-mount"]}
    assert seen["env"] == seen["args"]["--down"] and seen["out_env"] == seen["args"]["--out"]
    details = run.get_details()
    inputs = {i["consumptionDetails"]["inputName"]: i for i in details["inputDatasets"]}
    assert set(inputs) == {"raw", "mnt", "one", "pics", "pics_view"}
    assert inputs["pics"]["dataset"]["name"] == "pics" and inputs["pics"]["dataset"]["version"] == 1
    assert len(inputs["pics"]["dataset"]["manifest_hash"]) == 64
    [output] = details["outputDatasets"]
    assert output["dataset"] == {"name": "model", "version": output["dataset"]["version"],
                                 "datastore": "workspaceblobstore", "path": f"models/{run.id}"}
    assert ws.read_bytes(f"data/models/{run.id}/sub/model.txt") == b"trained on 6 files"
    model = Dataset.get_by_name(ws, "model")
    assert [f.rel for f in model.files()] == ["sub/model.txt"]
    return details


@pytest.mark.usefixtures("prefect_server")
def test_a_local_run_reads_downloads_and_mounts_and_writes_an_output(ws, tmp_path):
    files = _prepare(ws, tmp_path)
    run, seen = _data_run(ws, tmp_path, "local")
    first = _check(run, seen, files, ws)
    inputs = {i["consumptionDetails"]["inputName"]: i for i in first["inputDatasets"]}
    from prefect_mltrain.data.mount import fuse_unusable

    for name in ("mnt", "pics_view"):  # a folder of the store, and a dataset's files
        assert inputs[name]["consumptionDetails"]["mechanism"] == (
            "Mount" if fuse_unusable() is None else "Download")
    log = run.get_file_names()
    assert "logs/std_log.txt" in log
    lineage = run._record().lineage
    again, seen2 = _data_run(ws, tmp_path, "local")
    _check(again, seen2, files, ws)
    assert all(i["downloaded_bytes"] == 0 for i in again._record().lineage["inputs"]
               if not i["mounted"])  # unchanged data: nothing fetched
    assert any(i["downloaded_bytes"] > 0 for i in lineage["inputs"])


@pytest.mark.usefixtures("prefect_server")
def test_bad_data_fails_in_preparing_and_nothing_starts(ws, tmp_path):
    _prepare(ws, tmp_path)
    exp = Experiment(ws, "bad")
    cases = {
        "no datastore 'ghost'": ["--down", Datastore(ws, _entry={
            "name": "ghost", "url": str(tmp_path / "ghost")}).path("x").as_download()],
        "holds no files": ["--down", ws.get_default_datastore().path("empty").as_download()],
    }
    fs, root = ws.get_default_datastore().filesystem()
    fs.pipe_file(f"{root}/mnist/train/img0.png", b"changed after it was registered")
    cases["pics:1 no longer matches"] = ["--named", Dataset.get_by_name(ws, "pics")
                                         .as_named_input("pics").as_mount()]
    for message, arguments in cases.items():
        run = exp.submit(ScriptRunConfig(tmp_path / "proj", "read.py", arguments=arguments))
        run.wait_for_completion(timeout=120, raise_on_error=False)
        details = run.get_details()
        assert details["status"] == "Failed", message
        assert details["error"].startswith("Preparing:") and message in details["error"]
        assert "logs/std_log.txt" not in run.get_file_names()  # the script never started


@pytest.mark.usefixtures("prefect_server")
def test_s3_datastore_with_credentials_in_a_prefect_block(tmp_path, s3_workspace_options):
    from prefect.blocks.system import Secret

    s3 = s3_workspace_options
    ws = Workspace(tmp_path / "ws")
    options = dict(s3["storage_options"])
    block = f"s3-creds-{uuid.uuid4().hex[:8]}"
    Secret(value={"key": options.pop("key"), "secret": options.pop("secret")}).save(block)
    store = Datastore.register(ws, "raw", f"s3://mltrain-test/data-{uuid.uuid4().hex[:8]}",
                               credentials=block, storage_options=options)
    assert "secret" not in json.dumps(ws.read_json("datastores/raw.json")).replace(
        "credentials", "")
    files = _prepare(ws, tmp_path, store)
    run, seen = _data_run(ws, tmp_path, "local", store)
    _check(run, seen, files, ws)
    record = ws.read_bytes(f"experiments/data/runs/{run.id}/run.json").decode()
    assert "test" not in json.loads(record).get("lineage", {}).__repr__()
    again, _ = _data_run(ws, tmp_path, "local", store)
    assert all(i["downloaded_bytes"] == 0 for i in again._record().lineage["inputs"]
               if not i["mounted"])


@pytest.mark.usefixtures("prefect_server")
def test_a_docker_run_gets_its_data_read_only_and_writes_an_output(ws, tmp_path,
                                                                   docker_engine):
    from prefect_mltrain.compute import DockerCompute

    files = _prepare(ws, tmp_path)
    run, seen = _data_run(ws, tmp_path, DockerCompute(image=BASE_IMAGE))
    _check(run, seen, files, ws)
    assert seen["args"]["--down"].startswith("/mltrain/data/")
    assert seen["args"]["--out"] == "/mltrain/data-out/model_out"


@pytest.mark.usefixtures("prefect_server")
def test_a_dask_run_gets_its_data_on_the_worker(ws, tmp_path, dask_cluster):
    from prefect_mltrain.compute import DaskCompute

    files = _prepare(ws, tmp_path)
    run, seen = _data_run(ws, tmp_path, DaskCompute(address=dask_cluster))
    _check(run, seen, files, ws)
    assert "/mltrain/" in seen["args"]["--down"]  # the worker's own folder


WRITES_PER_RANK = """
import os, sys
rank = os.environ["RANK"]
for folder in (sys.argv[1], sys.argv[2]):
    with open(os.path.join(folder, f"rank{rank}.txt"), "w") as f:
        f.write(f"from rank {rank}")
"""


@pytest.mark.usefixtures("prefect_server")
def test_every_dask_rank_writes_its_data_outputs(ws, tmp_path, dask_cluster):
    """Each of 4 ranks on 2 hosts writes to two outputs, one in a folder of its own choosing
    (``source=``): every rank's files reach the destinations, as with one mounted output."""
    from prefect_mltrain import PyTorchConfiguration
    from prefect_mltrain.compute import DaskCompute

    write_script(tmp_path / "proj", "write.py", WRITES_PER_RANK)
    ds = ws.get_default_datastore()
    made = OutputFileDatasetConfig("made", destination=(ds, "ranks/{run-id}/made"))
    chosen = OutputFileDatasetConfig("chosen", source="model_dir",
                                     destination=(ds, "ranks/{run-id}/chosen"))
    run = Experiment(ws, "ranks").submit(ScriptRunConfig(
        tmp_path / "proj", "write.py", arguments=[made, chosen],
        compute_target=DaskCompute(address=dask_cluster),
        distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2)))
    assert run.wait_for_completion(timeout=180)["status"] == "Completed"
    fs, root = ds.filesystem()
    for name in ("made", "chosen"):
        folder = f"{root}/ranks/{run.id}/{name}"
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(folder)) == [
            f"rank{r}.txt" for r in range(4)]
        assert fs.cat_file(f"{folder}/rank3.txt") == b"from rank 3"
    written = {o["name"]: o["files"] for o in run._record().lineage["outputs"]}
    assert written == {"made": 4, "chosen": 4}


def test_a_file_that_changes_between_planning_and_download_is_not_cached(ws, tmp_path):
    """The content cache is keyed by what the plan saw: a file whose size changed before it
    was fetched stops the staging by name, and is not cached as the old version."""
    from prefect_mltrain.data.staging import plan_data, stage_inputs

    make_files(tmp_path / "src")
    ds = ws.get_default_datastore()
    ds.upload(src_dir=tmp_path / "src", target_path="moving", show_progress=False)
    arguments = ["--d", ds.path("moving", data_reference_name="d").as_download()]
    plan = plan_data(ws, arguments)
    fs, root = ds.filesystem()
    fs.pipe_file(f"{root}/moving/labels.csv", b"rewritten after the plan, longer than before")
    with pytest.raises(DataError, match="labels.csv changed in the store since the run was "
                                        "planned"):
        stage_inputs(plan, tmp_path / "run", tmp_path / "data")
    staged = stage_inputs(plan_data(ws, arguments), tmp_path / "run", tmp_path / "data2")
    labels = Path(staged.paths["d"]) / "labels.csv"
    assert labels.read_bytes() == b"rewritten after the plan, longer than before"
    staged.close()


def test_s3_transfers_go_through_obstore_only_when_the_options_say_all_it_needs(
        s3_workspace_options, tmp_path, monkeypatch):
    """Given keys and an endpoint, a bulk download is obstore's, byte for byte what the store
    holds; credentials it would find elsewhere (a profile, a role) or options it would not
    read the same way leave it to s3fs."""
    import s3fs

    from prefect_mltrain.data.s3_bulk import bulk_getter

    options = s3_workspace_options["storage_options"]
    prefix = f"mltrain-test/bulk-{uuid.uuid4().hex[:8]}"
    files = {f"{prefix}/d/f{i}.bin": uuid.uuid4().bytes * (i * 5000 + 1) for i in range(20)}
    s3fs.S3FileSystem(**options).pipe(files)
    get = bulk_getter("s3://mltrain-test", options)
    assert get is not None
    local = [str(tmp_path / f"f{i}.bin") for i in range(20)]
    get(list(files), local)
    assert [open(p, "rb").read() for p in local] == list(files.values())
    with pytest.raises(FileNotFoundError):
        get([f"{prefix}/missing.bin"], [str(tmp_path / "missing.bin")])
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):  # nothing from elsewhere
        monkeypatch.delenv(name, raising=False)
    keyless = {k: v for k, v in options.items() if k not in ("key", "secret")}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])  # boto's first source
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
    assert bulk_getter("s3://mltrain-test", keyless) is not None
    monkeypatch.setenv("AWS_PROFILE", "other")  # a profile named too: s3fs settles it
    for url, other in [("s3://mltrain-test", keyless),
                       ("s3://mltrain-test", {**options, "requester_pays": True}),
                       ("s3://mltrain-test", {"key": "k", "secret": "s"}),  # no region
                       ("gs://bucket", options)]:
        assert bulk_getter(url, other) is None, (url, other)


def test_s3_listing_through_obstore_gives_what_s3fs_find_gives(s3_workspace_options):
    """A folder, one file, nothing, and a refusal in S3's words: the same names, sizes and version
    tokens as s3fs, so a version pinned through one is checked alike through the other."""
    import s3fs

    from prefect_mltrain.data.dataset import version_token
    from prefect_mltrain.data.s3_bulk import bulk_lister

    options = s3_workspace_options["storage_options"]
    prefix = f"mltrain-test/list-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)
    fs.pipe({f"{prefix}/d/e/f{i}.bin": b"x" * i for i in range(1, 1200)}
            | {f"{prefix}/one.csv": b"a,b\n", f"{prefix}-sibling/x": b"not under it"})
    find = bulk_lister("s3://mltrain-test", options)
    assert find is not None

    def view(found: dict) -> dict:
        return {k: (v["size"], version_token(v)) for k, v in found.items()
                if v["type"] == "file"}

    for path in (prefix, f"{prefix}/d", f"{prefix}/one.csv", f"{prefix}/none"):
        assert view(find(path)) == view(fs.find(path, detail=True)), path
    assert len(find(prefix)) == 1200  # more than one page of the listing
    assert find(f"{prefix}/none") == {}
    with pytest.raises(OSError, match="^NoSuchBucket: The specified bucket does not exist"):
        find("mltrain-no-such-bucket/x")


def test_output_names_and_destinations(ws):
    out = OutputFileDatasetConfig()
    assert out.name.startswith("output_") and out.destination_path == "dataset/{run-id}/{output-name}"
    with pytest.raises(DataError, match="leaves the datastore"):
        OutputFileDatasetConfig(destination=(ws.get_default_datastore(), "../x"))
    src = ScriptRunConfig.model_validate_json(ScriptRunConfig(
        ".", command="echo", arguments=["--o", out]).model_dump_json(), context={"recorded": True})
    assert src.arguments[1] == out  # a record keeps its data arguments as they were given


def test_cli_registers_uploads_downloads_and_lists(ws, tmp_path, capsys):
    from prefect_mltrain.cli import main

    files = make_files(tmp_path / "src")
    common = ["--workspace", ws.url, "--json"]
    assert main(["datastore", "register", "raw", str(tmp_path / "raw"), *common]) == 0
    assert main(["datastore", "upload", str(tmp_path / "src"), "--name", "raw",
                 "--target-path", "mnist", *common]) == 0
    assert main(["datastore", "download", str(tmp_path / "got"), "--name", "raw",
                 "--prefix", "mnist", *common]) == 0
    assert (tmp_path / "got/mnist/labels.csv").read_text() == files["labels.csv"]
    capsys.readouterr()
    assert main(["datastore", "list", *common]) == 0
    assert {d["name"] for d in json.loads(capsys.readouterr().out)} == {
        "raw", "workspaceblobstore"}
    Dataset.File.from_files(path=[(Datastore.get(ws, "raw"), "mnist/train")]).register(
        ws, "pics")
    assert main(["dataset", "list", *common]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["name"], row["version"], row["files"]) == ("pics", 1, 5)
    assert main(["dataset", "show", "pics", *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(f["rel"] for f in shown["manifest"]) == [f"img{i}.png" for i in range(5)]
    assert main(["dataset", "show", "nope", "--workspace", ws.url]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err
