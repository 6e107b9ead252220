"""Where Baton's templates and static files are, in a checkout and in an installed copy.

The top-level ``templates/`` and ``static/`` folders of the repository are the source. A wheel carries them as
package data of this package (``baton_assets/templates``, ``baton_assets/static``: setup.py maps the folders in
at build time), so an installed copy finds them here; a checkout (editable install, ``make demo``, tests) has no
copy here and uses the repository's folders. docs/architecture.md, "Packaging".
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_PACKAGED = Path(str(resources.files(__name__)))
_CHECKOUT = _PACKAGED.parent


def _folder(name: str) -> Path:
    """The ``templates`` or ``static`` folder: the packaged copy when this package carries one, else the checkout's.

    Raises ``FileNotFoundError`` when neither exists (a wheel built without its data).
    """
    for candidate in (_PACKAGED / name, _CHECKOUT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"Baton's {name}/ folder is neither in {_PACKAGED} nor in {_CHECKOUT}")


TEMPLATES_DIR = _folder("templates")
STATIC_DIR = _folder("static")
