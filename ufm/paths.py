"""Output paths checked before the work that fills them, and written so that nothing half-done is left behind.

Every command that writes a file (``--save``, ``--store``, ``--export``, ``plot -o``) calls
:func:`check_output_path` before it computes anything: a missing folder, a path that is a folder, a folder this
process cannot write to (read-only, ``/proc``), or a wrong extension is bad input (exit 2), found in a millisecond
instead of after a long solve.
"""

from __future__ import annotations

import os
import secrets

from .errors import UFMInputError


def claim_output_path(flag: str, path, extensions: tuple[str, ...] | None = None) -> str:
    """Check that a file can be written at ``path`` and create the hidden temporary file beside it that the result is
    written to before being renamed over ``path`` (so a reader never sees half a file); return the temporary's path.
    Raise :class:`UFMInputError` naming ``flag`` otherwise.

    Creating the file is the test of the folder's writability, because ``os.access`` says yes for pseudo file
    systems such as /proc and for read-only mounts seen by root. The temporary keeps ``path``'s extension (plotting
    libraries choose the format by it).
    """
    path = os.fspath(path)
    if not isinstance(path, str) or not path.strip():
        raise UFMInputError(flag, path, "give a file name")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise UFMInputError(flag, path, "ends with a path separator; give a file name")
    if extensions and not path.lower().endswith(tuple(e.lower() for e in extensions)):
        raise UFMInputError(flag, path, f"the file must end in {' or '.join(extensions)}")
    if os.path.isdir(path):
        raise UFMInputError(flag, path, "is a folder; give a file name inside it")
    if os.path.lexists(path) and not os.path.isfile(path):
        # a device (/dev/null), a pipe or a dangling link: writing to a temporary name and renaming it over the path
        # would replace it
        raise UFMInputError(flag, path, "exists and is not a regular file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UFMInputError(flag, path, f"its folder {folder} " + ("is not a folder" if os.path.exists(folder)
                                                                    else "does not exist"))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UFMInputError(flag, path, "the file exists and is read-only")
    ext = os.path.splitext(path)[1]
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.partial{ext}")
    try:
        # mode 0o666 (less the umask), as the final file should have: mkstemp's 0o600 would survive the rename
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise UFMInputError(flag, path, f"cannot write in {folder} ({exc.strerror or type(exc).__name__})") from None
    return tmp


def check_output_path(flag: str, path, extensions: tuple[str, ...] | None = None) -> str:
    """Return ``path`` as a string if a file can be written there (:func:`claim_output_path`, its temporary removed
    again); None stays None. Raise :class:`UFMInputError` naming ``flag`` otherwise."""
    if path is None:
        return None
    os.remove(claim_output_path(flag, path, extensions))
    return os.fspath(path)


def check_input_file(flag: str, path) -> str:
    """An existing, readable regular file, or :class:`UFMInputError` naming ``flag``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UFMInputError(flag, path, "is a folder, not a file")
    if not os.path.exists(path):
        raise UFMInputError(flag, path, "no such file")
    if not os.access(path, os.R_OK):
        raise UFMInputError(flag, path, "the file is not readable")
    return path
