"""Deprecated alias of `tfra_redis.testing`, kept for one release; import that instead.

``from tfra_redis import servers`` keeps working (with a DeprecationWarning) so that code
written against the old module name runs unchanged until it moves to ``tfra_redis.testing``.
"""

from __future__ import annotations

import warnings

from tfra_redis.testing import *  # noqa: F403
from tfra_redis.testing import __all__  # noqa: F401

warnings.warn(
    "tfra_redis.servers is deprecated and will be removed in the next release; "
    "use tfra_redis.testing",
    DeprecationWarning,
    stacklevel=2,
)

if __name__ == "__main__":
    # ``python -m tfra_redis.servers up ...`` keeps working too.
    import sys

    from tfra_redis.testing.__main__ import main

    sys.exit(main())
