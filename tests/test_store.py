"""The run record: one writer module, updates that never lose each other, reads that never
write — on a local folder, in memory and on S3 (moto on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from prefect_mltrain import Run, Workspace
from prefect_mltrain.records import Runner, RunStatus
from prefect_mltrain.store import RunStore
from prefect_mltrain.watch import Watcher

WRITES = 15


def add_property(name: str, i: int):
    """A change that takes a while between its read and its write, as a slow writer's would:
    without the record's lock, writers running side by side would lose each other's."""
    def change(record):
        time.sleep(0.01)
        record.properties[f"{name}-{i}"] = str(i)
    return change


WRITER = """
import json, sys
from prefect_mltrain import Workspace
from prefect_mltrain.store import RunStore
sys.path.insert(0, sys.argv[7])
from test_store import add_property
store = RunStore(Workspace(sys.argv[1], json.loads(sys.argv[2]) or None))
for i in range(int(sys.argv[5])):
    store.update(sys.argv[3], sys.argv[4], add_property(sys.argv[6], i))
"""


@pytest.fixture(params=["local", "memory", "s3"])
def shared_ws(request, tmp_path):
    if request.param == "local":
        return Workspace(tmp_path / "ws")
    if request.param == "memory":
        return Workspace(f"memory://store-{uuid.uuid4().hex}")
    s3 = request.getfixturevalue("s3_workspace_options")
    return Workspace(f"{s3['url']}/store-{uuid.uuid4().hex}", s3["storage_options"])


@pytest.mark.timeout(180)
def test_concurrent_writers_never_lose_an_update(shared_ws):
    store = RunStore(shared_ws)
    record = store.create("cas")
    if shared_ws.protocol == "memory":  # one process's store: writers are threads
        def write(name):
            for i in range(WRITES):
                store.update("cas", record.run_id, add_property(name, i))
        writers = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(3)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(120)
    else:  # separate processes, as a runner, a watcher and a submitter are
        options = json.dumps(shared_ws.storage_options)
        here = str(Path(__file__).parent)
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, shared_ws.url, options, "cas",
                                   record.run_id, str(WRITES), f"w{n}", here]) for n in range(3)]
        assert [p.wait(timeout=150) for p in procs] == [0, 0, 0]
    final = store.read("cas", record.run_id)
    assert len(final.properties) == 3 * WRITES
    assert final.revision == 3 * WRITES
    assert shared_ws.find(f"experiments/cas/runs/{record.run_id}").keys() == {"run.json"}


def test_a_lock_left_by_a_dead_writer_is_broken(ws, monkeypatch):
    from prefect_mltrain import workspace

    store = RunStore(ws)
    record = store.create("stale")
    lock = f"experiments/stale/runs/{record.run_id}/.run.json.lock"
    ws.write_json(lock, {"host": "gone", "pid": 1, "time": time.time() - 3600})
    monkeypatch.setattr(workspace, "LOCK_TIMEOUT_SECONDS", 5.0)
    assert store.move("stale", record.run_id, RunStatus.RUNNING).status == RunStatus.RUNNING
    assert not ws.exists(lock)


def test_a_writer_that_waited_longer_than_the_lease_still_holds_the_lock_alone(ws, monkeypatch):
    """The lease counts from when the lock was taken: a writer that queued behind others
    for longer than the lease must not look stale the moment it gets in (a loaded machine
    made a third writer break in, and updates were lost)."""
    from prefect_mltrain import workspace

    monkeypatch.setattr(workspace, "LOCK_LEASE_SECONDS", 1.0)
    inside, overlaps = [], []

    def hold(seconds):
        with ws.lock("shared.json"):
            if inside:
                overlaps.append(list(inside))
            inside.append(threading.get_ident())
            time.sleep(seconds)
            inside.remove(threading.get_ident())

    first = threading.Thread(target=hold, args=(0.8,))  # within the lease
    first.start()
    time.sleep(0.1)
    queued = threading.Thread(target=hold, args=(0.8,))  # waits 0.7 s, then holds 0.8 s
    queued.start()
    time.sleep(1.1)  # the queued writer is inside; its wait began more than a lease ago
    late = threading.Thread(target=hold, args=(0.1,))
    late.start()
    for t in (first, queued, late):
        t.join(10)
    assert overlaps == []


COUNTER = """
import sys
from prefect_mltrain import Workspace
ws = Workspace(sys.argv[1])
for _ in range(int(sys.argv[2])):
    with ws.lock("counter.json"):
        ws.write_json("counter.json", ws.read_json("counter.json", 0) + 1)
"""


@pytest.mark.timeout(120)
def test_processes_racing_for_a_local_lock_never_hold_it_together(tmp_path):
    """Many processes taking one lock with nothing between their read and write: every
    increment counts. (fsspec's local ``mode="create"`` is a look and then an open: two
    writers could both pass the look, and twenty concurrent submits shared a run number.)"""
    ws, per = Workspace(tmp_path / "ws"), 40
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, ws.url, str(per)])
             for _ in range(8)]
    assert [p.wait(timeout=100) for p in procs] == [0] * 8
    assert ws.read_json("counter.json") == 8 * per


def test_an_empty_lock_left_by_a_writer_that_died_while_taking_it_is_broken(ws, monkeypatch):
    from prefect_mltrain import workspace

    ws.write_bytes(".shared.json.lock", b"")  # created, never written
    monkeypatch.setattr(workspace, "LOCK_LEASE_SECONDS", 0.5)
    time.sleep(1.0)
    with ws.lock("shared.json", timeout=5):
        ws.write_json("shared.json", 1)
    assert ws.read_json("shared.json") == 1 and not ws.exists(".shared.json.lock")


def test_an_ended_run_stays_ended(ws):
    store = RunStore(ws)
    record = store.create("final", status=RunStatus.RUNNING)
    done = store.move("final", record.run_id, RunStatus.COMPLETED, exit_code=0)
    again = store.move("final", record.run_id, RunStatus.FAILED, error="late")
    assert again.status == RunStatus.COMPLETED and again.error is None
    assert again.revision == done.revision
    assert [h.status for h in again.status_history] == ["NotStarted", "Running", "Completed"]


def test_reading_a_run_whose_runner_died_never_writes_and_the_watcher_ends_it(ws):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    store = RunStore(ws)
    record = store.create("dead", status=RunStatus.RUNNING)
    store.set("dead", record.run_id, runner=Runner(host=__import__("socket").gethostname(),
                                                   pid=dead.pid))
    path = f"experiments/dead/runs/{record.run_id}/run.json"
    before = ws.read_bytes(path)

    run = Run.get(ws, record.run_id)
    assert run.get_status() == "Running"
    run.get_details(), run.get_metrics(), run.get_file_names()
    assert ws.read_bytes(path) == before  # reading changed nothing

    ended = Watcher(store).settle(store.read("dead", record.run_id))
    assert ended.status == RunStatus.FAILED
    assert f"runner process {dead.pid}" in ended.error and "outputs synced so far" in ended.error
    assert run.wait_for_completion(raise_on_error=False, timeout=10)["status"] == "Failed"


def test_the_record_survives_a_reader_of_another_version(ws):
    """A record with fields this version does not know is read (they are ignored)."""
    store = RunStore(ws)
    record = store.create("compat")
    path = f"experiments/compat/runs/{record.run_id}/run.json"
    data = json.loads(ws.read_bytes(path))
    ws.write_bytes(path, json.dumps({**data, "added_later": {"x": 1}}).encode())
    assert store.read("compat", record.run_id).run_id == record.run_id


def _tree(store: RunStore, experiment: str) -> tuple[list[str], str, list[str]]:
    """Three top-level runs (the middle one a parent of two children, one of which has a
    child of its own), created in order; ids given with underscores, as users may."""
    first = store.create(experiment, run_id="first_of_all").run_id
    parent = store.create(experiment).run_id
    kids = [store.create(experiment, parent_run_id=parent, tags={"side": s}).run_id
            for s in ("left", "right")]
    grandchild = store.create(experiment, parent_run_id=kids[0]).run_id
    last = store.create(experiment, tags={"kind": "b"}, status=RunStatus.RUNNING).run_id
    return [last, parent, first], parent, [kids[1], kids[0], grandchild]


def test_runs_are_found_from_the_index_newest_first_without_reading_a_record(shared_ws,
                                                                           monkeypatch):
    from prefect_mltrain import Experiment

    store = RunStore(shared_ws)
    top, parent, (right, left, grandchild) = _tree(store, "found")
    exp = Experiment(shared_ws, "found")

    def no_reading(*args, **kwargs):
        raise AssertionError("a record was read")

    with monkeypatch.context() as m:  # finding runs reads the index only
        m.setattr(RunStore, "read", no_reading)
        m.setattr(RunStore, "read_many", no_reading)
        assert [r.id for r in exp.get_runs()] == top
        assert [e.run_id for e in store.entries("found", limit=2)] == top[:2]  # a first page
        assert [e.run_id for e in store.entries("found", parent, limit=5)] == [right, left]
        assert [r.id for r in Run(exp, parent).get_children()] == [right, left]
        assert {r.id for r in exp.get_runs(include_children=True)} == {
            *top, right, left, grandchild}
    assert [r.id for r in Run(exp, parent).get_children(recursive=True)] == [
        right, left, grandchild]
    # v1's filters: a tag's name, or names and values; properties alike; the status
    assert [r.id for r in exp.get_runs(tags="kind")] == [top[0]]
    assert [r.id for r in exp.get_runs(tags={"kind": "b"}, status="Running")] == [top[0]]
    assert exp.get_runs(tags={"kind": "a"}) == [] and exp.get_runs(status="Failed") == []
    Run(exp, right)._write().event({"type": "tag", "key": "side", "value": "moved"})
    assert [r.id for r in Run(exp, parent).get_children(tags={"side": "moved"})] == [right]
    assert [r.id for r in Run(exp, parent).get_children(tags={"side": "left"})] == [left]


def test_an_experiment_recorded_before_the_index_is_listed_and_indexed_by_its_next_run(ws):
    """Records without an index (an older version wrote them) are still found, by reading
    them; the next run created builds the index from them."""
    from prefect_mltrain import Experiment

    store = RunStore(ws)
    top, parent, children = _tree(store, "older")
    ws.delete("experiments/older/index", recursive=True)
    marker = ws.read_json("experiments/older/experiment.json")
    ws.write_json("experiments/older/experiment.json",
                  {k: v for k, v in marker.items() if k != "index"})
    exp = Experiment(ws, "older")
    assert [r.id for r in exp.get_runs()] == top
    assert [r.id for r in Run(exp, parent).get_children()] == children[:2]
    newest = store.create("older").run_id
    assert len(ws.find("experiments/older/index")) == 7
    assert [r.id for r in exp.get_runs()] == [newest, *top]


def test_reindex_lists_runs_copied_in_by_hand_and_drops_entries_of_runs_long_gone(ws, capsys):
    from prefect_mltrain import Experiment
    from prefect_mltrain.cli import main
    from prefect_mltrain.store import DANGLING_ENTRY_SECONDS, Entry

    store = RunStore(ws)
    top, _, _ = _tree(store, "copied")
    source = RunStore(Workspace(ws.root + "-other"))
    brought = source.create("copied", tags={"from": "backup"})
    record = f"experiments/copied/runs/{brought.run_id}/run.json"
    ws.write_bytes(record, source.ws.read_bytes(record))  # by hand: no index entry
    exp = Experiment(ws, "copied")
    assert brought.run_id not in [r.id for r in exp.get_runs()]
    long_gone = Entry("long_gone", time.time() - DANGLING_ENTRY_SECONDS - 60, False)
    being_made = Entry("being_made", time.time(), False)  # its record is on its way
    for entry in (long_gone, being_made):
        ws.write_bytes(entry.path("copied"), b"")
    assert main(["runs", "reindex", "-e", "copied", "--workspace", ws.root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"experiment": "copied", "added": 1, "removed": 1}]
    assert [r.id for r in exp.get_runs()] == ["being_made", brought.run_id, *top]
    assert not ws.exists(long_gone.path("copied")) and ws.exists(being_made.path("copied"))
