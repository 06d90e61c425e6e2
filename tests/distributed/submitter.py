"""One submitter process for the load test: ``studio submit`` N times through the real CLI.

    python submitter.py NAME N    -> prints the ids of the queued jobs, one a line
"""

import sys

from studio.cli import cli


def main(name: str, n: int) -> None:
    for i in range(n):
        args = ["submit", f"{name} job {i}", "-m", "testgen", "-n", str(1 + i % 2), "-s", str(i), "-p", "size=4", "-p", "steps=1"]
        cli.main(args, prog_name="studio", standalone_mode=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
