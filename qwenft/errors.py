"""User-facing errors: one paragraph, exit code 2, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad recipe, bad data, missing file).

    The CLI prints the message as one paragraph and exits with code 2; it never
    shows a traceback for these.
    """

    exit_code = 2


def did_you_mean(word: str, choices) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or ''."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from Python, or the same surfaced as text by Rust/C++ writers (tokenizers, safetensors)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text
