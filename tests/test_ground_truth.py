"""The ground-truth generator (benchmarks/ground_truth.py): selection rule, claims that die with their
process, stage-level resume, and the committed plan."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


gt = load_benchmark("ground_truth")


def test_committed_plan_follows_the_rule() -> None:
    from qnas import data
    from search_spaces import get_space

    committed = json.loads((gt.STORE / "architectures.json").read_text())
    assert gt.plan(get_space(gt.SPACE), data.dataset_info(gt.DATASET)) == committed
    archs = committed["architectures"]
    assert len(archs) == 80 and sum(a["params"] > 1e6 for a in archs) >= 10
    assert {a["split"] for a in archs} == set(gt.SPLITS)
    assert min(a["params"] for a in archs) < 2e4 and max(a["params"] > 5e6 for a in archs)
    assert len(committed["agreement"]) == 16 and len(set(committed["seed1"])) == 24


def test_visit_order_is_a_permutation_that_spreads_prefixes() -> None:
    order = gt.visit_order(16)
    assert sorted(order) == list(range(16)) and order[:4] == [0, 8, 4, 12]


def test_truth_jobs_cover_every_architecture_once_and_retrain_seed1_after_every_seed0() -> None:
    archs = {"architectures": [{"id": f"id-{i:03d}"} for i in range(8)], "agreement": [],
             "seed1": ["id-002", "id-005"]}
    keys = [j.key for j in gt.jobs(archs, "truth", "k20e5")]
    assert sorted(k for k in keys if k.endswith("_s0")) == sorted(f"id-{i:03d}_k20e5_s0" for i in range(8))
    assert len(keys) == 10 and {k for k in keys if k.endswith("_s1")} == {"id-002_k20e5_s1", "id-005_k20e5_s1"}
    assert all(k.endswith("_s0") for k in keys[:8])  # every ranking row before any noise-ceiling retrain
    assert keys[8:] == sorted(keys[8:], key=lambda k: keys.index(k.replace("_s1", "_s0")))  # in seed-0 order


def test_a_cheap_worker_takes_the_fewest_macs_first_and_trained_nets_before_all(tmp_path: Path) -> None:
    archs = {"architectures": [{"id": f"id-{i:03d}", "macs": m} for i, m in enumerate([50, 10, 30, 20])],
             "agreement": [], "seed1": ["id-000", "id-002"]}
    todo = gt.jobs(archs, "truth", "k20e5")
    store, cache = tmp_path / "store", tmp_path / "cache"
    assert gt.work_order(todo, store, "plan", cache) == todo
    cheap = [j.key for j in gt.work_order(todo, store, "cheap", cache)]
    assert cheap == ["id-001_k20e5_s0", "id-003_k20e5_s0", "id-002_k20e5_s0", "id-002_k20e5_s1",
                     "id-000_k20e5_s0", "id-000_k20e5_s1"]
    (store / "results").mkdir(parents=True)  # id-000 trained, its quantized stages left...
    (store / "results" / "id-000_k20e5_s0.json").write_text(json.dumps({"stages": {"fp32": {}}}))
    for order in gt.ORDERS:  # ...but trained on another machine: it must train again, so no head start
        assert [j.key for j in gt.work_order(todo, store, order, cache)] == (
            [j.key for j in todo] if order == "plan" else cheap)
    (cache / "id-000_k20e5_s0").mkdir(parents=True)  # its weights here: it goes first in either order
    (cache / "id-000_k20e5_s0" / "fp32.pt").write_bytes(b"")
    for order in gt.ORDERS:
        assert gt.work_order(todo, store, order, cache)[0].key == "id-000_k20e5_s0"


def test_a_claim_is_released_when_its_process_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, fcntl, os
fd = os.open({str(tmp_path / 'job.lock')!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print('held', flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with gt.claimed(tmp_path, "job") as mine:
            assert not mine  # a live process holds it
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with gt.claimed(tmp_path, "job") as mine:
            assert mine  # kill -9 left nothing stale
    finally:
        holder.kill()


def _tiny_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    arch = {"id": "id-000", "split": "id", "index": 0, "arch": "stem8-8:conv3-maxpool-16:conv3-maxpool-32:conv3-fc0",
            "params": 6866, "macs": 1, }
    (store / "architectures.json").write_text(json.dumps(
        {"architectures": [arch], "agreement": ["id-000"], "seed1": ["id-000"]}))
    return store


def test_the_estimate_counts_training_again_where_the_weights_are_not_here(tmp_path: Path) -> None:
    fits = {"fp32": (100.0, 0.0), "ptq": (10.0, 0.0), "faq": (1.0, 0.0)}
    job = gt.jobs(json.loads((_tiny_store(tmp_path) / "architectures.json").read_text()), "truth", "s63")[0]
    assert gt.estimate_seconds(job, None, fits) == 112
    stage = {"provenance": {"git_commit": "0" * 40}}
    trained = {"stages": {"fp32": stage, "ptq": stage}}
    assert gt.estimate_seconds(job, trained, fits) == 2
    assert gt.estimate_seconds(job, trained, fits, weights_here=False) == 102  # training again, then FAQ
    assert gt.estimate_seconds(job, trained, fits, weights_here=False, reproducible=False) == 112  # all again
    assert not gt.same_machine_kind(stage, "cpu")  # no fingerprint: nothing to vouch that it is the same net
    here = {"weights_sha256": "f" * 16, "provenance": {"device": "cpu",
                                                         "cpu_capability": torch.backends.cpu.get_cpu_capability()}}
    assert gt.same_machine_kind(here, "cpu") and not gt.same_machine_kind(here, "cuda")
    assert not gt.same_machine_kind({**here, "provenance": {"device": "cpu", "cpu_capability": "other"}}, "cpu")


def test_a_worker_under_hours_takes_no_job_the_cost_model_says_would_not_end(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, cache = _tiny_store(tmp_path), tmp_path / "cache"
    (store / "results").mkdir()
    args = ["worker", "--phase", "truth", "--budget", "s63", "--store", str(store), "--cache", str(cache),
            "--device", "cpu", "--test-images", "200"]
    assert gt.main([*args, "--hours", "1"]) == 2  # no committed stages: no cost model to bound by
    assert "cost model" in capsys.readouterr().err

    def committed(seconds: float) -> None:  # committed stages of other nets, each `seconds` of CPU
        for i in range(3):
            row = {"key": f"x-{i}", "budget": "s63", "macs": 10 ** i, "stages": {
                s: {"provenance": {"cpu_seconds": seconds}} for s in ("fp32", "ptq", "faq_w4a4")}}
            (store / "results" / f"x-{i}.json").write_text(json.dumps(row))

    committed(1e5)  # ~28 CPU-hours a stage
    assert gt.main([*args, "--hours", "1"]) == 0
    assert "2 would not end within --hours" in capsys.readouterr().out  # seed 0 and seed 1
    assert not (store / "results" / "id-000_s63_s0.json").exists()
    committed(1.0)
    assert gt.main([*args, "--hours", "1", "--limit", "1"]) == 0
    assert "would not end" not in capsys.readouterr().out
    assert (store / "results" / "id-000_s63_s0.json").exists()
    with pytest.raises(SystemExit) as exc:
        gt.main([*args, "--hours", "0"])
    assert exc.value.code == 2 and "--hours" in capsys.readouterr().err


def test_a_worker_runs_every_stage_and_a_rerun_resumes_the_missing_one(tmp_path: Path) -> None:
    store, cache = _tiny_store(tmp_path), tmp_path / "cache"
    args = ["worker", "--phase", "truth", "--budget", "s63", "--store", str(store), "--cache", str(cache),
            "--device", "cpu", "--test-images", "200"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "benchmarks" / "ground_truth.py")
    done = subprocess.run([sys.executable, script, *args, "--limit", "1"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    path = store / "results" / "id-000_s63_s0.json"
    result = json.loads(path.read_text())
    assert list(result["stages"]) == ["fp32", "ptq", "faq_w4a4", "faq_w2a2"]
    assert 0.0 <= result["stages"]["faq_w2a2"]["test_top1"] <= 1.0
    assert result["stages"]["ptq"]["provenance"]["engine_sha256"].keys() == set(gt.ENGINE_FILES)
    # Lose the last stage: a rerun does only that one, from the cached trained weights.
    w4a4 = result["stages"]["faq_w4a4"]
    del result["stages"]["faq_w2a2"]
    path.write_text(json.dumps(result))
    t0 = time.time()
    again = subprocess.run([sys.executable, script, *args, "--limit", "1"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert "training fp32" not in again.stdout and "faq_w2a2 done" in again.stdout
    resumed = json.loads(path.read_text())
    assert resumed["stages"]["faq_w4a4"] == w4a4 and "faq_w2a2" in resumed["stages"]
    assert time.time() - t0 < 300


def test_a_retrained_net_that_is_another_net_is_measured_again_at_every_stage(tmp_path: Path) -> None:
    store, cache = _tiny_store(tmp_path), tmp_path / "cache"
    args = [sys.executable, str(ROOT / "benchmarks" / "ground_truth.py"), "worker", "--phase", "truth", "--budget",
            "s63", "--store", str(store), "--cache", str(cache), "--device", "cpu", "--test-images", "200",
            "--limit", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(args, env=env, capture_output=True, text=True, timeout=600).returncode == 0
    path = store / "results" / "id-000_s63_s0.json"
    row = json.loads(path.read_text())
    assert row["stages"]["fp32"]["provenance"]["cpu_capability"]

    def lose_weights_and_w2a2(sha: str) -> None:  # a new machine: no cache, the last stage left
        shutil.rmtree(cache)
        changed = json.loads(json.dumps(row))
        changed["stages"]["fp32"]["weights_sha256"] = sha
        del changed["stages"]["faq_w2a2"]
        path.write_text(json.dumps(changed))

    # Retraining here reproduces the recorded net: only the missing stage is measured.
    lose_weights_and_w2a2(row["stages"]["fp32"]["weights_sha256"])
    same = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert same.returncode == 0 and "training again" in same.stdout and "another net" not in same.stdout
    again = json.loads(path.read_text())
    assert again["stages"]["faq_w4a4"] == row["stages"]["faq_w4a4"] and "superseded" not in again
    assert again["stages"]["faq_w2a2"]["test_top1"] == row["stages"]["faq_w2a2"]["test_top1"]  # on the same net
    # A row trained on another kind of CPU: the new net is measured at every stage, the old stages kept.
    lose_weights_and_w2a2("0" * 16)
    path.write_text(json.dumps({**json.loads(path.read_text()), "superseded": {"ptq": {"older": "quantizer"}}}))
    other = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert other.returncode == 0 and "gave another net" in other.stdout, other.stdout
    again = json.loads(path.read_text())
    assert list(again["stages"]) == ["fp32", "ptq", "faq_w4a4", "faq_w2a2"]
    assert again["stages"]["fp32"]["weights_sha256"] == row["stages"]["fp32"]["weights_sha256"]
    (away,) = again["retrained_away"]  # the old net whole, its own superseded stages with it
    assert away["weights_sha256"] == "0" * 16 and set(away["stages"]) == {"fp32", "ptq", "faq_w4a4"}
    assert away["stages"]["ptq"] == row["stages"]["ptq"] and away["superseded"] == {"ptq": {"older": "quantizer"}}
    assert "superseded" not in again


def test_a_failing_job_is_recorded_and_skipped_and_the_others_go_on(tmp_path: Path) -> None:
    store, cache = _tiny_store(tmp_path), tmp_path / "cache"
    (store / "results").mkdir()
    bad = {"key": "id-000_s63_s0", "arch": "another", "params": 1, "macs": 1, "stages": {}}
    (store / "results" / "id-000_s63_s0.json").write_text(json.dumps(bad))
    args = [sys.executable, str(ROOT / "benchmarks" / "ground_truth.py"), "worker", "--phase", "agreement",
            "--store", str(store), "--cache", str(cache), "--device", "cpu", "--test-images", "200", "--limit", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "id-000_s63_s0 FAILED: QnasError" in done.stdout and "another net" in done.stdout
    assert "id-000_k10e1_s0: training fp32" in done.stdout  # the next job ran
    failed = json.loads(gt.failed_path(store, "id-000_s63_s0").read_text())
    assert "another net" in failed["error"] and failed["traceback"]
    assert json.loads((store / "results" / "id-000_s63_s0.json").read_text()) == bad  # the row is untouched
    assert "1 jobs failed" in subprocess.run([*args[:2], "status", "--store", str(store)], capture_output=True,
                                             text=True).stdout
    again = subprocess.run([*args, "--retry-failed"], env=env, capture_output=True, text=True, timeout=600)
    assert "id-000_s63_s0 FAILED" in again.stdout  # retried (and still another net)


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gt.main(["status", "--store", str(tmp_path)]) == 2
    assert "plan" in capsys.readouterr().err
    store = _tiny_store(tmp_path)
    assert gt.main(["run", "--phase", "truth", "--store", str(store)]) == 2  # truth needs --budget
    assert "--budget" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's type: refused before anything starts
        gt.main(["run", "--phase", "truth", "--budget", "s63", "--store", str(store), "--threads", "0"])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err


def test_the_truth_phase_remeasures_stages_of_an_older_quantizer() -> None:
    def rev(spec: str) -> str | None:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", spec], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None

    before, since, head = rev(f"{gt.QUANT_ENGINE_SINCE}^"), rev(gt.QUANT_ENGINE_SINCE), rev("HEAD")
    if not (before and since and head):
        pytest.skip("needs the git history (a full clone)")
    arch = {"id": "id-000", "split": "id", "index": 0, "arch": "a", "params": 1, "macs": 1}
    row = {"stages": {s: {"provenance": {"git_commit": before}} for s in ("fp32", "ptq", "faq_w4a4")}}
    truth = gt.Job(arch, "s63", 0, ("w4a4", "w2a2"), refresh=True)
    # FP32 training did not change: the trained net is kept; what the older quantizer measured is not.
    assert truth.todo(row) == ["ptq", "faq_w4a4", "faq_w2a2"]
    assert gt.Job(arch, "s63", 0, ("w4a4",)).todo(row) == []  # the agreement phase keeps its own rows
    row["stages"]["ptq"]["provenance"]["git_commit"] = head + "+dirty"
    row["stages"]["faq_w4a4"]["provenance"]["git_commit"] = since
    assert truth.todo(row) == ["faq_w2a2"]
    assert truth.todo(None) == ["fp32", "ptq", "faq_w4a4", "faq_w2a2"]


def test_merge_prefers_a_current_quantizer_stage_to_a_stale_one(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{gt.QUANT_ENGINE_SINCE}^"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    if not before:
        pytest.skip("needs the git history (a full clone)")
    store = _tiny_store(tmp_path)
    (store / "results").mkdir()
    net = {"weights_sha256": "aaaa", "provenance": {"device": "cpu", "git_commit": before}}
    old = {"v": "old engine", "provenance": {"git_commit": before}}
    new = {"v": "current engine", "provenance": {"git_commit": gt.QUANT_ENGINE_SINCE}}
    (store / "results" / "id-000_s63_s0.json").write_text(json.dumps(
        {"key": "id-000_s63_s0", "test_images": 2000, "stages": {"fp32": net, "ptq": old}}))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "id-000_s63_s0.json").write_text(json.dumps(
        {"key": "id-000_s63_s0", "test_images": 2000, "stages": {"fp32": net, "ptq": new}}))
    assert gt.main(["merge", "--store", str(store), "--from", str(remote)]) == 0
    assert "merged 1 new stages" in capsys.readouterr().out
    merged = json.loads((store / "results" / "id-000_s63_s0.json").read_text())
    assert merged["stages"]["ptq"] == new and merged["superseded"]["ptq"] == old


def test_the_user_phase_covers_the_hand_written_split() -> None:
    from qnas import user_split

    todo = gt.jobs({"architectures": [], "agreement": [], "seed1": []}, "user", "k10e2")
    assert [j.arch["arch"] for j in todo] == [user_split.PREFIX + n for n in user_split.names()]
    assert all(j.stages == ("fp32", "ptq", "faq_w4a4") and j.arch["macs"] > 0 for j in todo)
    info = gt.data.dataset_info(gt.DATASET)
    module = gt.build_arch(gt.get_space(gt.SPACE), todo[0].arch["arch"], info)
    assert sum(p.numel() for p in module.parameters()) == todo[0].arch["params"]


def test_a_net_trained_on_another_device_type_is_left_to_that_device(tmp_path: Path) -> None:
    """Retraining is deterministic on one device type only: a CPU worker without the GPU-trained weights
    must not measure PTQ/FAQ on a net it retrained itself."""
    store, cache = _tiny_store(tmp_path), tmp_path / "cache"
    row = {"key": "id-000_s63_s0", "test_images": 200,
           "stages": {"fp32": {"provenance": {"device": "cuda", "git_commit": "x"}}}}
    (store / "results").mkdir()
    (store / "results" / "id-000_s63_s0.json").write_text(json.dumps(row))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ground_truth.py"), "worker", "--phase", "truth",
                           "--budget", "s63", "--store", str(store), "--cache", str(cache), "--device", "cpu",
                           "--test-images", "200", "--limit", "1"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "left for a cuda worker" in done.stdout
    assert json.loads((store / "results" / "id-000_s63_s0.json").read_text()) == row


def test_merge_adds_another_machines_stages_and_keeps_ours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, cache = _tiny_store(tmp_path), tmp_path / "cache"
    (store / "results").mkdir()
    net = {"weights_sha256": "aaaa", "provenance": {"device": "cpu"}}
    other = {"weights_sha256": "bbbb", "provenance": {"device": "cuda"}}
    def row(key: str, stages: dict, test_images: int = 2000) -> str:
        return json.dumps({"key": key, "test_images": test_images, "stages": stages})

    ours = json.loads(row("id-000_s63_s0", {"fp32": net, "ptq": {"v": "here"}}))
    (store / "results" / "id-000_s63_s0.json").write_text(json.dumps(ours))
    (store / "results" / "id-002_s63_s0.json").write_text(row("id-002_s63_s0", {"fp32": net}))
    (store / "results" / "id-003_s63_s0.json").write_text(row("id-003_s63_s0", {"fp32": net}))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "id-000_s63_s0.json").write_text(
        row("id-000_s63_s0", {"fp32": net, "ptq": {"v": "there"}, "faq_w4a4": {"v": "there"}}))
    (remote / "id-001_s63_s0.json").write_text(row("id-001_s63_s0", {"fp32": other}))
    (remote / "id-002_s63_s0.json").write_text(row("id-002_s63_s0", {"fp32": other, "ptq": {"v": "of another net"}}))
    # the same net, its PTQ measured on another test set: one row holds one test set's accuracies
    (remote / "id-003_s63_s0.json").write_text(row("id-003_s63_s0", {"fp32": net, "ptq": {"v": "500"}}, 500))
    args = ["merge", "--store", str(store), "--cache", str(cache), "--from", str(remote)]
    assert gt.main(args) == 0
    out = capsys.readouterr().out
    assert "merged 2 new stages" in out and "another net or test set there: id-002_s63_s0, id-003_s63_s0" in out
    assert "ptq" not in json.loads((store / "results" / "id-003_s63_s0.json").read_text())["stages"]
    merged = json.loads((store / "results" / "id-000_s63_s0.json").read_text())
    assert merged["stages"] == {"fp32": net, "ptq": {"v": "here"}, "faq_w4a4": {"v": "there"}}
    assert (store / "results" / "id-001_s63_s0.json").exists()
    assert json.loads((store / "results" / "id-002_s63_s0.json").read_text())["stages"] == {"fp32": net}
    with gt.claimed(gt.claims_dir(store), "id-000_s63_s0") as mine:  # a worker here is writing that row
        assert mine and gt.main(args) == 0
    assert "merge again later: id-000_s63_s0" in capsys.readouterr().out
    assert gt.main(["merge", "--store", str(store), "--from", str(tmp_path / "nope")]) == 2


def test_cached_weights_are_checked_against_the_recorded_net(tmp_path: Path) -> None:
    state = {"w": torch.ones(2, 2)}
    torch.save(state, tmp_path / "fp32.pt")
    sha = gt.weights_sha256(state)
    assert gt.cached_weights_match(tmp_path / "fp32.pt", {"weights_sha256": sha})
    assert not gt.cached_weights_match(tmp_path / "fp32.pt", {"weights_sha256": "0" * 16})
    assert gt.cached_weights_match(tmp_path / "fp32.pt", {})  # rows from before the fingerprint
    assert not gt.cached_weights_match(tmp_path / "missing.pt", {})


def test_commits_git_cannot_resolve_count_as_current() -> None:
    if subprocess.run(["git", "cat-file", "-e", f"{gt.QUANT_ENGINE_SINCE}^{{commit}}"], cwd=ROOT).returncode:
        pytest.skip("needs the git history (a full clone)")
    assert not gt.stale("unknown") and not gt.stale("0" * 40)


def test_status_estimates_what_is_left_from_the_committed_stages(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = _tiny_store(tmp_path)
    (store / "results").mkdir()
    for i, macs in enumerate((1e6, 2e6, 4e6)):  # fp32 CPU seconds exactly 10 + 1e-9 x MACs x passes
        budget = gt.BUDGETS["s63"]
        row = {"key": f"x-{i}", "budget": "s63", "macs": macs,
               "stages": {"fp32": {"provenance": {"cpu_seconds": 10 + 1e-9 * macs * budget.passes}}}}
        (store / "results" / f"x-{i}.json").write_text(json.dumps(row))
    a, b = gt.cost_model(store)["fp32"]
    assert a == pytest.approx(10) and b == pytest.approx(1e-9)
    assert gt.main(["status", "--store", str(store), "--budget", "s63"]) == 0
    out = capsys.readouterr().out
    assert "CPU-hours left" in out and "fp32 1.00 1.00" in out  # an exact fit misses by nothing


def test_a_row_takes_stages_only_of_its_own_net_and_test_set() -> None:
    arch = {"id": "id-000", "split": "id", "index": 0, "arch": "a", "params": 1, "macs": 1}
    job = gt.Job(arch, "s63", 0, ("w4a4",))
    row = {"arch": "a", "params": 1, "macs": 1, "test_images": 2000, "stages": {}}
    gt.check_row(row, job, 2000)
    with pytest.raises(gt.QnasError, match="500 test images, not --test-images 2000"):
        gt.check_row({**row, "test_images": 500}, job, 2000)
    with pytest.raises(gt.QnasError, match="another net"):
        gt.check_row({**row, "arch": "b"}, job, 2000)


def test_a_run_on_another_test_set_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    store = _tiny_store(tmp_path)
    (store / "results").mkdir()
    (store / "results" / "id-000_s63_s0.json").write_text(json.dumps({"key": "id-000_s63_s0", "test_images": 2000,
                                                                       "stages": {}}))
    args = ["worker", "--phase", "agreement", "--store", str(store), "--cache", str(tmp_path / "cache")]
    assert gt.main([*args, "--test-images", "500"]) == 2
    assert "measured on 2000 test images, not --test-images 500" in capsys.readouterr().err
    assert not (store / "failed").exists() and len(list((store / "results").iterdir())) == 1
