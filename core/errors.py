"""What the user is told: the one exception type for bad input (the CLI prints its message as one line and exits 2),
and the notes a trace carries on how it was made."""


class UserError(Exception):
    """Input the user can fix (unknown model, malformed config, impossible sizes...)."""


def join_notes(*parts: str | None) -> str:
    """Notes in order, "; "-separated, the empty ones left out."""
    return "; ".join(p for p in parts if p)


def require_int(name: str, value, minimum: int = 1) -> int:
    """`value` where it is an integer of at least `minimum`; else the one line that names the option `--name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"--{name} must be an integer of at least {minimum}, got {value!r}")
    return value
