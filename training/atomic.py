"""Files that are either complete or absent: a stage's "done" markers (results JSON, reports) are
written to a temporary file in the same folder and renamed over the target, so a job killed while
writing leaves the previous file (or none) rather than half of one that the resume would trip on."""

import os
import tempfile
from pathlib import Path


def write_text_atomic(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
