"""``python -m tfra_redis.cli``: the ``tfra-redis`` command."""

import sys

from tfra_redis.cli import main

if __name__ == "__main__":
    sys.exit(main())
