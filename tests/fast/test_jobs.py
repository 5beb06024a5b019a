"""The job service: a subprocess, JSON-lines progress, typed results and errors, stop."""

from __future__ import annotations

import threading

import pytest

from workbench.errors import ConversionError
from workbench.jobs import JobFailed, JobService, JobSpec
from workbench.paths import Paths

from .fakes import scratch

TEST_JOBS = {"count": "tests.fast.job_functions:count", "bar": "tests.fast.job_functions:bar"}


@pytest.fixture
def jobs(tmp_path):
    return JobService(Paths(str(scratch(tmp_path))), TEST_JOBS)


def test_progress_lines_then_the_result(jobs, tmp_path):
    seen = []
    result = jobs.run(JobSpec("count", {"n": 3, "out": str(tmp_path / "made.txt")}), seen.append)
    assert seen == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]  # engine prints on stdout did not get in
    assert result.output == str(tmp_path / "made.txt") and open(result.output).read() == "3"


def test_the_jobs_own_error_comes_back_as_its_class(jobs, tmp_path):
    with pytest.raises(ConversionError, match="^Counting to -1 makes no sense; give a positive number.$"):
        jobs.run(JobSpec("count", {"n": -1, "out": str(tmp_path / "x")}))


def test_a_crash_and_an_unknown_job_are_one_sentence(jobs, tmp_path):
    with pytest.raises(JobFailed, match="The job failed: ZeroDivisionError"):
        jobs.run(JobSpec("count", {"n": 0, "out": str(tmp_path / "x")}))
    with pytest.raises(Exception, match="Unknown job 'nope'"):
        jobs.run(JobSpec("nope"))


def test_stop_kills_the_job(jobs, tmp_path):
    stop = threading.Event()
    with pytest.raises(JobFailed, match="was stopped"):
        jobs.run(JobSpec("count", {"n": 1000, "out": str(tmp_path / "x"), "delay": 0.05}, title="Counting"),
                 lambda message: stop.set(), stop)
    assert not (tmp_path / "x").exists()


def test_an_engines_tqdm_bar_becomes_fractions(jobs, tmp_path):
    messages, fractions = [], []
    jobs.run(JobSpec("bar", {"n": 4, "out": str(tmp_path / "made.txt")}), messages.append,
             on_fraction=lambda done, message: fractions.append((done, message)))
    assert messages == ["starting"]
    assert fractions[0] == (0.0, "Copying tensors") and fractions[-1] == (1.0, "Copying tensors")
    assert [f for f, _ in fractions] == sorted(f for f, _ in fractions) and len(fractions) >= 3
