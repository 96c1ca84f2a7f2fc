"""``tfra-redis``: operator commands for Redis-backed embedding tables (no TensorFlow needed).

Run ``tfra-redis --help`` (or ``python -m tfra_redis.cli --help``) for the commands::

    tfra-redis [--config FILE] [--json] inspect [--model-tag TAG]
    tfra-redis [--config FILE] [--json] export  --table NAME --dim D [--dtype T] --out FILE
    tfra-redis [--config FILE] [--json] import  --table NAME --dim D --in FILE
    tfra-redis [--config FILE] [--json] copy    --table NAME --dim D --to-model-tag TAG
                                                [--to-config FILE] [--to-table NAME]
    tfra-redis [--config FILE] [--json] rebucket --table NAME --dim D
    tfra-redis [--config FILE] [--json] convert-slots --params NAME --wrapper NAME --slots m,v
                                                --dim D --to {per-slot,fused,fused-row}
                                                [--from LAYOUT] [--dry-run]
    tfra-redis [--config FILE] [--json] expire  --table NAME --dim D --seconds N
    tfra-redis [--config FILE] [--json] persist --table NAME --dim D
    tfra-redis [--config FILE] [--json] bench   [--keys N] [--dim D] [--batch B]
    tfra-redis [--json] build-ops [--force]

``--config`` names the same JSON file the tables use. Without it the config is found as a table
finds it (``RedisTableConfig``): ``$TFRA_REDIS_CONFIG_PATH``. ``--config`` and ``--json`` may be
given before or after the command name.

``inspect`` without ``--model-tag`` lists every model tag it finds (a bucket key
``<model tag>:<table>{<digits>}`` is split at its first ``:``; tables named with
``using_md5_prefix_name`` have no readable tag and are not listed). Table commands use the
config's ``model_tag_runtime`` (TFRA's default: ``test``) unless ``--model-tag`` is given.

Exit codes: 0 success; 1 Redis refused or failed (unreachable, authentication, ACL, bad stored
data); 2 usage, config or input-file errors; 3 the table to export or copy does not exist under
that model tag (the error names the tables that do). Passwords are never printed.

Table commands open the table with ``RedisStore(..., manage_ttl=False)``, so running one never
puts a TTL on a table when it ends. Opening a table does what opening it in a training job does:
it clears the buckets' TTL (TFRA's PERSIST on open) and, if its buckets are empty while buckets of
another layout of the same table exist, moves those rows into the config's layout.

``build-ops`` compiles the native lookup op for the installed TensorFlow (see
:mod:`tfra_redis.native_ops`); it needs TensorFlow, g++ and no Redis config.

The export file format is documented in :mod:`tfra_redis.cli._export_file`.

The package is split by job: ``_errors`` (exit codes, the errors that map to them), ``_output``
(results, notes, errors, progress), ``_config`` (loading the config), ``_export_file`` (the
``TFRAREDIS1`` file), ``_inspect`` (scanning Redis for tables) and ``_commands`` (the table
commands); the argument parser and :func:`main` are here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tfra_redis.cli._commands import (
    cmd_bench,
    cmd_copy,
    cmd_expire,
    cmd_export,
    cmd_import,
    cmd_persist,
    cmd_rebucket,
)
from tfra_redis.cli._config import _load_config
from tfra_redis.cli._errors import (
    EXIT_NO_TABLE,
    EXIT_OK,
    EXIT_REDIS,
    EXIT_USAGE,
    NoSuchTable,
    RedisUnavailable,
    UsageError,
)
from tfra_redis.cli._export_file import (
    END_TAG,
    KEY_DTYPES,
    MAGIC,
    PAGE_TAG,
    VALUE_DTYPES,
    read_export_header,
    read_export_pages,
    verify_export,
)
from tfra_redis.cli._inspect import cmd_inspect
from tfra_redis.cli._output import Output, Progress
from tfra_redis.cli._slots import cmd_convert_slots

# The names ``tfra_redis.cli`` had as one module, still importable from it.
__all__ = [
    "END_TAG",
    "EXIT_NO_TABLE",
    "EXIT_OK",
    "EXIT_REDIS",
    "EXIT_USAGE",
    "KEY_DTYPES",
    "MAGIC",
    "PAGE_TAG",
    "VALUE_DTYPES",
    "NoSuchTable",
    "Output",
    "Progress",
    "RedisUnavailable",
    "UsageError",
    "build_parser",
    "cmd_bench",
    "cmd_build_ops",
    "cmd_convert_slots",
    "cmd_copy",
    "cmd_expire",
    "cmd_export",
    "cmd_import",
    "cmd_inspect",
    "cmd_persist",
    "cmd_rebucket",
    "main",
    "read_export_header",
    "read_export_pages",
    "verify_export",
]


def _slot_list(text: str) -> list[str]:
    slots = [s.strip() for s in text.split(",")]
    if not all(slots):
        raise argparse.ArgumentTypeError(f"{text!r}: give slot names separated by commas")
    return slots


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    # The same options on the main parser and on every command, so they work in either place;
    # SUPPRESS keeps a command's missing option from overwriting the main parser's value.
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    parent.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="JSON config of the Redis backend (a table's config file, or a directory holding "
        "redis_config.json); default: $TFRA_REDIS_CONFIG_PATH",
    )
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the result as JSON on stdout (errors too)",
    )
    return parent


def _table_options(parser: argparse.ArgumentParser, *, dtype_default: str | None) -> None:
    parser.add_argument("--table", required=True, metavar="NAME", help="the table name")
    parser.add_argument("--dim", required=True, type=_positive, metavar="D", help="values per row")
    parser.add_argument(
        "--dtype",
        choices=VALUE_DTYPES,
        default=dtype_default,
        help=f"value dtype (default: {dtype_default or 'from the file'})",
    )
    parser.add_argument(
        "--key-dtype",
        choices=KEY_DTYPES,
        default="int64" if dtype_default else None,
        help=f"key dtype (default: {'int64' if dtype_default else 'from the file'})",
    )
    parser.add_argument(
        "--model-tag",
        metavar="TAG",
        help="use this model tag instead of the config's model_tag_runtime (whose default, "
        "as in TFRA, is 'test')",
    )


def _progress_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``tfra-redis`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tfra-redis",
        description="Inspect, move and measure Redis-backed embedding tables (TFRA layout).",
        parents=[_global_options(suppress=False)],
        epilog="Exit codes: 0 ok, 1 Redis error, 2 usage or config error, 3 no such table. "
        "Run 'tfra-redis COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shared = [_global_options(suppress=True)]

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=description, parents=shared)

    p = command(
        "inspect",
        "list the tables of every model tag, or of one",
        "List the tables stored under every model tag found (or under --model-tag): buckets "
        "per node, rows (HLEN), bytes "
        "(MEMORY USAGE, estimated), value size and the dim it means for float32 (sampled "
        "with HRANDFIELD), and TTL. Reads only; changes nothing.",
    )
    p.add_argument(
        "--model-tag", metavar="TAG", help="only this model tag (default: every tag found)"
    )
    p.set_defaults(run=cmd_inspect)

    p = command(
        "export",
        "write a table to a portable file",
        "Write every row of a table to a TFRAREDIS1 file (see the module docs for the format).",
    )
    _table_options(p, dtype_default="float32")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--page", type=_positive, default=65536, help="rows per page (default 65536)")
    _progress_options(p)
    p.set_defaults(run=cmd_export)

    p = command(
        "import",
        "load a file written by export into a table",
        "Upsert the rows of a TFRAREDIS1 file into a table (dtypes come from the file).",
    )
    _table_options(p, dtype_default=None)
    p.add_argument("--in", dest="input", required=True, metavar="FILE", help="the file to read")
    _progress_options(p)
    p.set_defaults(run=cmd_import)

    p = command(
        "copy",
        "copy a table to another model tag, name or server",
        "Copy every row of a table to another model tag, table name or Redis (--to-config); "
        "an upsert into the target.",
    )
    _table_options(p, dtype_default="float32")
    p.add_argument("--to-model-tag", metavar="TAG", help="the target model tag")
    p.add_argument("--to-config", metavar="FILE", help="the target's config (another Redis)")
    p.add_argument("--to-table", metavar="NAME", help="the target table name (default: same)")
    p.add_argument("--page", type=_positive, default=65536, help="rows per page (default 65536)")
    _progress_options(p)
    p.set_defaults(run=cmd_copy)

    p = command(
        "rebucket",
        "move a table's rows into the config's bucket layout",
        "Move rows of the table that sit in buckets of another layout (another storage_slice "
        "or other hash tags, same model tag) into the config's layout: copy, verify, then "
        "delete the old buckets. Safe to re-run after an interruption.",
    )
    _table_options(p, dtype_default="float32")
    p.set_defaults(run=cmd_rebucket)

    p = command(
        "convert-slots",
        "move an embedding's optimizer slots between per-slot, fused and fused-row layouts",
        "Convert an embedding's optimizer slots between TFRA's layout (one table per "
        "slot, 'per-slot'), redis_fused_slots' one table holding every slot ('fused') and "
        "redis_fused_row's slots after each row in the embedding's own table ('fused-row'), "
        "bucket by bucket: copy, read back, and only then delete the source's slots (fused-row "
        "keeps the rows). Training refuses the slots until it finished; safe to re-run after an "
        "interruption. Stop training jobs on the embedding first.",
    )
    p.add_argument("--params", required=True, metavar="NAME", help="the embedding's name")
    p.add_argument(
        "--wrapper",
        metavar="NAME",
        help="the trainable wrapper's name (a Keras layer's wrapper is "
        "'DynamicEmbedding/<layer>-shadow'; the optimizer's layout error prints the command)",
    )
    p.add_argument(
        "--short-file-name",
        action="store_true",
        help="the embedding was made with short_file_name=True (slot tables <params>_<slot>)",
    )
    p.add_argument(
        "--slots",
        required=True,
        type=_slot_list,
        metavar="S1,S2",
        help="TFRA's slot names in the optimizer's order, which is the column order of a fused "
        "row: Adam m,v (m,v,vhat with amsgrad), Adagrad accumulator, Ftrl accumulator,linear",
    )
    p.add_argument("--dim", required=True, type=_positive, metavar="D", help="the embedding's dim")
    p.add_argument(
        "--dtype", choices=VALUE_DTYPES, default="float32", help="value dtype (default float32)"
    )
    p.add_argument("--key-dtype", choices=KEY_DTYPES, default="int64", help="default int64")
    p.add_argument(
        "--model-tag",
        metavar="TAG",
        help="use this model tag instead of the config's model_tag_runtime",
    )
    layouts = ("per-slot", "fused", "fused-row", "row")
    p.add_argument(
        "--to", required=True, choices=layouts, help="the layout to convert to (row = fused-row)"
    )
    p.add_argument(
        "--from",
        dest="from_layout",
        choices=layouts,
        help="the layout the slots are in (default: the one other layout holding them, or "
        "the source of an unfinished conversion)",
    )
    p.add_argument(
        "--initial",
        metavar="V1,V2",
        help="per slot, the value the optimizer starts a slot from, used for ids missing from "
        "some per-slot tables (default 0; Adagrad: its initial_accumulator_value)",
    )
    p.add_argument("--dry-run", action="store_true", help="count rows, write nothing")
    p.add_argument(
        "--keep-source", action="store_true", help="keep the source tables after the copy"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="convert even though the destination tables hold rows (source rows win)",
    )
    p.add_argument("--page", type=_positive, default=4096, help="ids per page (default 4096)")
    _progress_options(p)
    p.set_defaults(run=cmd_convert_slots)

    p = command("expire", "put a TTL on a table", "Set a TTL on every bucket of a table.")
    _table_options(p, dtype_default="float32")
    p.add_argument(
        "--seconds", required=True, type=int, metavar="N", help="TTL in seconds (0 deletes)"
    )
    p.set_defaults(run=cmd_expire)

    p = command("persist", "clear a table's TTL", "Remove the TTL from every bucket of a table.")
    _table_options(p, dtype_default="float32")
    p.set_defaults(run=cmd_persist)

    p = command(
        "bench",
        "measure insert and find throughput",
        "Insert and find float32 rows in a scratch table, print rows/s, delete the table.",
    )
    p.add_argument("--keys", type=_positive, default=100_000, help="rows (default 100000)")
    p.add_argument("--dim", type=_positive, default=16, help="values per row (default 16)")
    p.add_argument("--batch", type=_positive, default=4096, help="rows per call (default 4096)")
    p.set_defaults(run=cmd_bench)

    p = command(
        "build-ops",
        "compile the native lookup op for this TensorFlow",
        "Compile tfra-redis's native TensorFlow lookup op (lookups inside tf.function without "
        "Python or the GIL) against the installed TensorFlow with g++, into "
        "$TFRA_REDIS_OPS_DIR (default ~/.cache/tfra_redis/ops). Takes about a minute; does "
        "nothing when the library for this TensorFlow is already built. Needs no Redis config.",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when already built")
    p.set_defaults(run=cmd_build_ops, needs_config=False)
    return parser


def cmd_build_ops(args: argparse.Namespace, config: object, out: Output) -> int:
    """``tfra-redis build-ops``: :func:`tfra_redis.native_ops.build`, errors as usage errors."""
    from tfra_redis import native_ops

    try:
        already = not args.force and native_ops.is_built()
        path = native_ops.build(force=args.force, log=out.note)
    except (native_ops.NativeOpsError, ImportError) as err:  # no compiler, headers or TF
        raise UsageError(str(err)) from None
    out.result(
        {"library": str(path), "built": not already},
        lambda r: r["library"] if r["built"] else f"{r['library']} (already built)",
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tfra-redis`` console script and ``python -m tfra_redis.cli``."""
    args = build_parser().parse_args(argv)
    out = Output(as_json=args.json)
    try:
        from tfra_redis import (
            ConfigError,
            RedisAuthError,
            RedisConnectionError,
            RedisTableError,
        )
    except ImportError as err:  # a broken install; say so instead of a traceback
        print(f"tfra-redis: error: cannot load tfra_redis: {err}", file=sys.stderr)
        return EXIT_REDIS
    try:
        config = _load_config(args.config, out) if getattr(args, "needs_config", True) else None
        code: int = args.run(args, config, out)
        return code
    except (UsageError, ConfigError) as err:
        out.error(type(err).__name__, str(err))
        return EXIT_USAGE
    except (ValueError, TypeError) as err:
        # RedisStore's argument checks (dim, dtypes, shapes).
        out.error(type(err).__name__, str(err))
        return EXIT_USAGE
    except (RedisConnectionError, RedisAuthError, RedisUnavailable) as err:
        out.error(type(err).__name__, str(err))
        return EXIT_REDIS
    except RedisTableError as err:
        out.error(type(err).__name__, str(err))
        return EXIT_REDIS
    except NoSuchTable as err:
        out.error(type(err).__name__, str(err))
        return EXIT_NO_TABLE
    except KeyboardInterrupt:
        out.error("KeyboardInterrupt", "interrupted")
        return 130
