"""Many runs at once: a batch runner that fills one machine safely and scales out on Dask.

    from runner.batch import run_many
    results = run_many([{"target": "./repo-a"}, {"target": "owner/repo@v1", "llm": "m"}],
                       workers=4, results="results.jsonl")

``runner_env.run_many`` re-exports ``run_many``. See docs/scale.md.
"""

from runner.batch.admission import Capacity, machine_capacity
from runner.batch.jobs import Job, JobDefaults, JobOptions, load_jobs
from runner.batch.results import JobResult, ResultsFile
from runner.batch.run import BatchProgress, BatchReport, run_batch, run_many
from runner.batch.worker import RetryPolicy

__all__ = [
    "BatchProgress",
    "BatchReport",
    "Capacity",
    "Job",
    "JobDefaults",
    "JobOptions",
    "JobResult",
    "ResultsFile",
    "RetryPolicy",
    "load_jobs",
    "machine_capacity",
    "run_batch",
    "run_many",
]
