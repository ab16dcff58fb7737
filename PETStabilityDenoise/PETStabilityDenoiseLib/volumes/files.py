"""Writing a file whole: a temporary file beside it, renamed into place. An interrupted run (Ctrl+C, a full disk,
the end of a session) therefore never leaves half a file, and two processes writing the same file leave one whole
copy. Used for training checkpoints, the evaluation's records, figures and report, sinograms and cohort
summaries; imports only the standard library.
"""

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_atomically(path: Path, write: Callable[[IO[Any]], object], binary: bool = False) -> Path:
    """Writes ``path`` through ``write(handle)`` into a temporary file beside it, then renames it into place.

    Args:
        path: the file to write; its folder is made if missing.
        write: writes the content to the open handle it is given.
        binary: open the handle in binary mode; otherwise text, UTF-8, with newlines written as given (what
            ``csv`` needs).

    Raises:
        whatever ``write`` or the file system raises; the temporary file is removed and ``path`` left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(handle, "wb") if binary else os.fdopen(handle, "w", encoding="utf-8", newline="")) as stream:
            write(stream)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it private; give it an ordinary file's mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
