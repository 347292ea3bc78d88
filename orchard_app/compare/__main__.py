"""`python -m orchard_app.compare <sweep or run dirs>... [--out DIR]`: the comparison table.

Prints the table and writes comparison.md and comparison.csv (by default into the sweep
directory when one directory is given, else into the current directory). A path that does not
exist or holds no finished run is one message and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchard_app.compare import compare, to_markdown, write
from orchard_app.errors import OrchardError, print_error
from orchard_app.rundir.layout import METRICS

EPILOG = """examples:
  python -m orchard_app -m experiment=medmnist_v2 dataset=breastmnist training.seed=0,1,2
  python -m orchard_app.compare multirun/2026-01-31/10-00-00
  python -m orchard_app.compare multirun/2026-01-31 outputs/2026-01-30/breastmnist_* --out results/
"""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m orchard_app.compare",
        description="Per dataset and experiment: mean ± std (sample, ddof=1) over seeds of test "
        "ACC and AUC beside the MedMNIST v2 paper's ResNet-18 (28) and best ACC, the "
        "differences and the number of seeds. Writes comparison.md and comparison.csv.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", metavar="DIR",
        help="sweep directories (multirun/<date>/<time>, or any folder above runs) or run "
        "directories (those with a metrics.json)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None,
        help="folder for comparison.md and comparison.csv (default: the one sweep directory "
        "given, else the current directory)",
    )  # fmt: skip
    return parser.parse_args(argv)


def default_out(paths: list[str]) -> Path:
    """The sweep directory when exactly one non-run directory was given, else the cwd (a run
    directory is a run's record: nothing is added to it)."""
    if len(paths) == 1:
        path = Path(paths[0]).expanduser()
        if path.is_dir() and not (path / METRICS).is_file():
            return path
    return Path.cwd()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        comparison = compare(args.paths)
        md, csv_path = write(comparison, args.out or default_out(args.paths))
    except OrchardError as e:
        print_error(e, prog="orchard_app.compare")
        return e.exit_code
    print(to_markdown(comparison), end="")
    print(f"\nwritten: {md} and {csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
