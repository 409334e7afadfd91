"""Card ids as people may see them: in logs at INFO and above and in `evsed status`.

A card number is a credential (cloned cards start charging sessions on someone else's
account), so only its last four characters leave the process unless DEBUG is asked for.
"""

from __future__ import annotations

SHOWN = 4


def mask_tag(id_tag: str | None) -> str:
    """``"04A2B3C4D5"`` -> ``"******C4D5"``; four characters or fewer: all hidden."""
    if not id_tag:
        return ""
    if len(id_tag) <= SHOWN:
        return "*" * len(id_tag)
    return "*" * (len(id_tag) - SHOWN) + id_tag[-SHOWN:]
