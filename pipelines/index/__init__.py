"""The embedded index: Parquet part files on any fsspec location, a ledger of runs, a visible view.

Modules, each importing only those above it:

- :mod:`~pipelines.index.storage`: paths, text files, append-only part files (no run semantics);
- :mod:`~pipelines.index.ledger`: the run protocol (plan, commit, recover, compaction markers);
- :mod:`~pipelines.index.view`: which rows are visible, and compaction;
- :mod:`~pipelines.index.location`: :class:`IndexLocation`, the facade readers and the driver use;
- :mod:`~pipelines.index.writer`: :class:`PartWriter`, the backends' block writer;
- :mod:`~pipelines.index.accounting`: the run's accounting of every listed file.
"""

from pipelines.index.location import IndexLocation, page_vectors
from pipelines.index.storage import CONFIG_FILE, ERRORS_DIR, PAGES_DIR, REPORT_FILE

__all__ = ["CONFIG_FILE", "ERRORS_DIR", "PAGES_DIR", "REPORT_FILE", "IndexLocation", "page_vectors"]
