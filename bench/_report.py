"""Shared by the bench scripts: print a results dict as one JSON object or as aligned lines."""

from __future__ import annotations

import json


def print_results(results: dict, as_json: bool) -> None:
    """One JSON object (``as_json``), else one ``name value`` line per entry (floats to 3 places)."""
    if as_json:
        print(json.dumps(results))
        return
    width = max(len(k) for k in results) + 2
    for k, v in results.items():
        print(f"{k:{width}s} {v:.3f}" if isinstance(v, float) else f"{k:{width}s} {v}")
