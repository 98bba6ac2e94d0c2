"""``python -m benchmarks``: ``report`` re-renders the report; other names run (:mod:`benchmarks.cli`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from benchmarks import report

        report.main(argv[1:])
        return 0
    from benchmarks import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
