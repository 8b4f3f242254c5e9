"""JSON-lines reading shared by the benchmark scripts' report helpers."""

import json


def read_jsonl(path):
    """The JSON objects of the lines of `path` that hold one; other lines,
    and a missing file, give nothing."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows
