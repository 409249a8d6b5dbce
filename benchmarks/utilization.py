"""How busy the workers of a run were, from a `METAREC_TRACE` file.

    METAREC_TRACE=/tmp/trace.jsonl make reproduce
    python benchmarks/utilization.py /tmp/trace.jsonl --workers 2

Prints per worker the jobs it ran, its busy seconds and the share of the run's span (first job
start to last job end) it was busy, then the slowest jobs. Idle shares are what a perfect
schedule of the same jobs could still win; the busy seconds are what only faster jobs can.
With `--simulate 1 2 4 8` it also replays the jobs, as long as they took, on that many workers
(`executors.simulated_span`): what a machine with more cores would take for the same run;
`--drop trial` adds what the same run would take without any tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metarec_lib.executors import read_trace, simulated_span, trace_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--top", type=int, default=15, help="slowest jobs to list")
    parser.add_argument("--simulate", type=int, nargs="*", default=[],
                        help="worker counts to replay the jobs on")  # fmt: skip
    parser.add_argument("--drop", nargs="*", default=[], metavar="KIND",
                        help="with --simulate: also replay without the jobs of these kinds "
                             "(trial: a run without tuning)")  # fmt: skip
    args = parser.parse_args()
    summary = trace_summary(args.trace, args.workers)
    print(summary.round(3).to_string(index=False))
    jobs = read_trace(args.trace)
    span = jobs["end"].max() - jobs["start"].min()
    print(f"\nspan {span:.0f} s; busy {jobs['seconds'].sum():.0f} worker-seconds "
          f"({jobs.groupby('kind')['seconds'].sum().round(0).to_dict()})")  # fmt: skip
    print(jobs.nlargest(args.top, "seconds")[["kind", "label", "worker", "seconds"]]
          .round(1).to_string(index=False))  # fmt: skip
    for workers in args.simulate:
        span = simulated_span(args.trace, workers)
        print(f"{workers} worker(s): the jobs would span {span:.0f} s", end="")
        if args.drop:
            left = simulated_span(args.trace, workers, drop=set(args.drop))
            print(f", {left:.0f} s without {', '.join(args.drop)} jobs", end="")
        print()


if __name__ == "__main__":
    main()
