"""`--scheduler`: the same per-file tasks on a real Dask LocalCluster; results, state store and resume as locally."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from .cli_runs import comparable_summary, last_plan, plan, run

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, as `dask worker ADDRESS --nworkers 2 --nthreads 1` would give."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local.scheduler_address


def test_a_cluster_run_gives_the_local_results_and_shares_the_state(
    cluster: str, mixed_folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    folder = tmp_path / "inputs"
    shutil.copytree(mixed_folder, folder)
    local = tmp_path / "local" / "r.csv"
    local.parent.mkdir()
    assert run(folder, "--out", local, "--workers", "2", *model_args, env=cli_env).returncode == 1

    out = tmp_path / "dask" / "r.csv"
    out.parent.mkdir()
    first = run(folder, "--out", out, "--scheduler", cluster, *model_args, env=cli_env)
    assert first.returncode == 1, first.stderr
    assert f"sending files to the Dask cluster at {cluster} (2 worker thread(s))" in first.stderr
    assert out.read_bytes() == local.read_bytes()
    pd.testing.assert_frame_equal(comparable_summary(out), comparable_summary(local))
    assert sorted(p.name for p in (out.parent / "r_charts").iterdir()) == sorted(
        p.name for p in (local.parent / "r_charts").iterdir()
    )

    # Resume works across executors: the state store does not care where a file was analysed.
    assert run(folder, "--out", out, "--scheduler", cluster, *model_args, env=cli_env).returncode == 1
    assert last_plan(out) == plan(1, kept=3, skipped=1, **{"failed before, retried": 1})
    shutil.copy(folder / "astronaut.jpg", folder / "zz_copy.jpg")
    assert run(folder, "--out", out, "--workers", "2", *model_args, env=cli_env).returncode == 1
    assert last_plan(out) == plan(2, kept=3, skipped=1, new=1, **{"failed before, retried": 1})
    reference = tmp_path / "reference" / "r.csv"
    reference.parent.mkdir()
    run(folder, "--out", reference, "--scheduler", cluster, *model_args, env=cli_env)
    assert out.read_bytes() == reference.read_bytes()


def test_an_unreachable_scheduler_is_a_usage_error(
    mixed_folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    result = run(
        mixed_folder, "--out", tmp_path / "r.csv", "--scheduler", "tcp://127.0.0.1:9", *model_args,
        env={**cli_env, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.stderr
    assert not (tmp_path / "r.csv").exists()
