"""Command-line plumbing shared by the experiments (``python -m experiments.<name>``).

Every experiment takes the same locations/knobs, spelled the same way: ``--workdir`` (results,
logs, checkpoints and, by default, figures), ``--seed``, ``--visuals-dir`` (figures; default
``<workdir>/figures``, see :func:`figures_dir`), ``--data-dir`` and ``--progress`` /
``--no-progress`` (default: bars when stderr is a terminal, one line per epoch otherwise).

Errors: argparse reports a bad flag value as one ``error:`` line (the ``type=`` functions below
check values while parsing); :func:`run` turns a ``ValueError`` / ``FileNotFoundError`` raised
by ``main`` (the library's input checks) into ``error: <message>`` and exit status 2, so the
command line never shows a traceback while a Python caller of ``main`` still gets the exception
(set ``JAXCNN_TRACEBACK=1`` to see it on the command line too).

The package's parts, all re-exported here (``from experiments import _cli``):

* this module: the parser, ``--help`` formatting, the shared flags (:func:`add_common`,
  :func:`add_cifar10_training`, :func:`add_transfer_training`,
  :func:`add_run_flags`), argparse value types, the batch-size
  check and :func:`run`;
* :mod:`experiments._cli.tfds_splits`: TFDS split strings (``--train-split`` /
  ``--eval-split``) and the train/eval overlap warning;
* :mod:`experiments._cli.results`: what lessons write and print: ``results.json`` (written
  atomically), the columns of a trained model's row, plain-text tables, and CIFAR-10 loading
  for the lessons that train on it.

Lessons do not import each other: what two of them share lives here; training recipes are
``FitConfig``s in the library (:mod:`jaxcnn.train.recipes`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from experiments._cli.results import (
    format_table,
    load_cifar10,
    print_table,
    training_summary,
    update_results,
    write_json,
)
from experiments._cli.tfds_splits import (
    CIFAR10_SPLIT_SIZES,
    splits_overlap,
    tfds_split,
    warn_split_overlap,
)
from jaxcnn.paths import file_in_the_way

__all__ = [
    "CIFAR10_SPLIT_SIZES",
    "REPO_ROOT",
    "TFDS_DATA_DIR_HELP",
    "ArgumentParser",
    "HelpFormatter",
    "add_cifar10_training",
    "add_common",
    "add_progress",
    "add_run_flags",
    "add_transfer_training",
    "check_batch_size",
    "figures_dir",
    "format_table",
    "load_cifar10",
    "make_parser",
    "non_negative_float",
    "non_negative_int",
    "output_folder",
    "positive_float",
    "positive_int",
    "print_table",
    "run",
    "smoothing",
    "splits_overlap",
    "tfds_split",
    "training_summary",
    "unit_interval",
    "update_results",
    "warn_split_overlap",
    "write_json",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

TFDS_DATA_DIR_HELP = ("TFDS data_dir holding the dataset (default: $TFDS_DATA_DIR, else "
                      "~/tensorflow_datasets)")


# --------------------------------------------------------------------------------------------
# Parser and --help
# --------------------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help only where X means something.

    Unlike ``argparse.ArgumentDefaultsHelpFormatter`` it leaves out the default of flags that
    take no value (``--no-resume`` would read "(default: True)"), of ``None`` and empty
    defaults (which mean "the recipe's" / "auto" / "off": the help text says which), and of
    help texts that already state their default. Sequences are shown comma-separated, as
    they are typed.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.nargs == 0  # store_true / store_false / store_const / count / help
            or default is None
            or default is argparse.SUPPRESS
            or (isinstance(default, list | tuple | set | dict | str) and not default)
            or "default" in text.lower()
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        if isinstance(default, list | tuple):
            shown = ",".join(str(v) for v in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (no usage block) on stderr, exit
    status 2: ``python -m experiments.cifar10: error: argument --epochs: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's; with several processes only process 0 writes figures."""
        parsed = super().parse_args(args, namespace)
        from jaxcnn.distributed import is_primary

        if getattr(parsed, "figures", None) and not is_primary():
            parsed.figures = False
        return parsed


def make_parser(experiment: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for ``experiment`` whose ``--help`` shows the real defaults and
    whose bad flag values are one line of error."""
    return ArgumentParser(
        prog=f"python -m experiments.{experiment}",
        description=description,
        formatter_class=HelpFormatter,
    )


def add_common(
    parser: argparse.ArgumentParser,
    experiment: str,
    *,
    workdir: bool = True,
    seed: bool = True,
    visuals: bool = True,
    data_dir: bool = False,
    data_dir_help: str = TFDS_DATA_DIR_HELP,
    default_seed: int = 0,
) -> argparse.ArgumentParser:
    """Add the shared flags to ``parser``; each can be left out with its keyword."""
    if workdir:
        parser.add_argument(
            "--workdir",
            type=output_folder,
            default=Path("runs") / experiment,
            help="folder for everything the run writes (figures and, where the experiment "
                 "has them, results JSON, logs, checkpoints, bundles); created if missing",
        )
    if seed:
        parser.add_argument(
            "--seed",
            type=int,
            default=default_seed,
            help="random seed for parameter init, data split and shuffling",
        )
    if visuals:
        parser.add_argument(
            "--visuals-dir",
            type=output_folder,
            default=None,
            help="folder the PNG figures are written to, created if missing (default: "
                 f"<workdir>/figures; --visuals-dir visuals/{experiment} rewrites the "
                 "README's committed figures)",
        )
    if data_dir:
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help=data_dir_help,
        )
    return parser


def add_progress(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--progress`` / ``--no-progress`` (dest ``progress``); default: on when stderr is a
    terminal, so a log file gets the fit loop's one line per epoch instead of bars."""
    parser.add_argument("--progress", dest="progress", action="store_true",
                        help="show progress bars (default: only when stderr is a terminal; "
                             "otherwise one line per epoch)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars, even on a terminal")
    parser.set_defaults(progress=_stderr_is_terminal())
    return parser


def add_run_flags(parser: argparse.ArgumentParser, *,
                  resume: bool = True) -> argparse.ArgumentParser:
    """The flags of a lesson that trains: ``--no-resume`` (dest ``resume``; left out with
    ``resume=False``), ``--no-figures`` (dest ``figures``) and :func:`add_progress`'s."""
    if resume:
        parser.add_argument("--no-resume", dest="resume", action="store_false",
                            help="start from scratch even when a checkpoint exists in --workdir")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="skip writing figures")
    return add_progress(parser)


def add_transfer_training(parser: argparse.ArgumentParser, *,
                          zero_epochs_skip: bool = False) -> argparse.ArgumentParser:
    """The two-phase transfer-learning flags shared by ``flowers`` and ``custom`` (one place, so
    both lessons keep the same measured defaults): ``--head-epochs``, ``--head-lr`` (phase 1: a
    Dense head on cached features), ``--trainable-blocks``, ``--fine-tune-epochs``,
    ``--fine-tune-lr`` and ``--no-cache-activations`` (phase 2: fine-tuning the top modules).
    ``zero_epochs_skip``: ``--fine-tune-epochs 0`` is allowed and skips phase 2."""
    parser.add_argument("--head-epochs", type=positive_int, default=60,
                        help="phase 1: epochs of the Dense head on cached features")
    parser.add_argument("--head-lr", type=positive_float, default=1e-3,
                        help="phase 1: AdamW learning rate of the head")
    parser.add_argument("--trainable-blocks", type=positive_int, default=3,
                        help="phase 2: modules below the head that are unfrozen (head_conv and "
                             "the last MBConv blocks)")
    parser.add_argument("--fine-tune-epochs",
                        type=non_negative_int if zero_epochs_skip else positive_int, default=5,
                        help="phase 2: epochs of fine-tuning"
                             + (" (0 skips phase 2)" if zero_epochs_skip else ""))
    parser.add_argument("--fine-tune-lr", type=positive_float, default=3e-4,
                        help="phase 2: peak AdamW learning rate (warm-up, then cosine)")
    parser.add_argument("--no-cache-activations", dest="cache_activations",
                        action="store_false",
                        help="phase 2: run the whole network every step instead of caching the "
                             "frozen modules' output once (in <workdir>/cache/) and training the "
                             "top part on it; slower, but the only way to add image "
                             "augmentation beyond flips (see jaxcnn.transfer.fine_tune)")
    return parser


def add_cifar10_training(
    parser: argparse.ArgumentParser,
    *,
    epochs_help: str,
    batch_size: int | None = 128,
    batch_size_help: str = "global batch size, split over all local devices",
) -> argparse.ArgumentParser:
    """The flags of a lesson that trains on CIFAR-10 (:func:`load_cifar10` reads the splits):
    ``--train-split``, ``--eval-split``, ``--epochs`` (default None: the lesson's recipe, which
    ``epochs_help`` states) and ``--batch-size`` (default ``batch_size``; None: the recipe's,
    which ``batch_size_help`` then states)."""
    parser.add_argument("--train-split", type=tfds_split, default="train",
                        help="TFDS split to train on, e.g. 'train' or 'train[:45000]'")
    parser.add_argument("--eval-split", type=tfds_split, default="test",
                        help="TFDS split to report accuracy on (never trained on), e.g. 'test' "
                             "or 'train[45000:]' when only the train split is available")
    parser.add_argument("--epochs", type=positive_int, default=None, help=epochs_help)
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=batch_size_help)
    return parser


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def figures_dir(args: argparse.Namespace) -> Path:
    """Where the run writes its figures: ``--visuals-dir`` if given, else ``<workdir>/figures``.

    The README's committed images in ``visuals/<lesson>/`` are rewritten only when asked for
    with ``--visuals-dir visuals/<lesson>``; no default run changes a tracked file.
    """
    explicit = getattr(args, "visuals_dir", None)
    if explicit is not None:
        return Path(explicit)
    workdir = getattr(args, "workdir", None)
    if workdir is None:
        raise ValueError("figures_dir needs --visuals-dir or --workdir")
    return Path(workdir) / "figures"


# --------------------------------------------------------------------------------------------
# Value types (argparse ``type=``): a bad value becomes one ``error:`` line while parsing
# --------------------------------------------------------------------------------------------


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text}")
    return value


def output_folder(text: str) -> Path:
    """argparse type: a folder a run writes to (created later if missing); an existing file at
    that path, or above it, is an error now rather than after the training."""
    path = Path(text)
    existing = file_in_the_way(path)
    if existing is not None:
        where = "is a file" if existing == path else f"is inside {existing}, a file"
        raise argparse.ArgumentTypeError(
            f"{text} {where}, not a folder; pass a folder path (created if missing)")
    return path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value != value:  # NaN
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = _float(text, "a number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0."""
    value = _float(text, "a number >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a fraction strictly between 0 and 1."""
    value = _float(text, "a fraction between 0 and 1")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a fraction between 0 and 1 (exclusive), got {text}")
    return value


def smoothing(text: str) -> float:
    """argparse type: a label-smoothing amount in [0, 1)."""
    value = _float(text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


# --------------------------------------------------------------------------------------------
# Checks after loading data, and the entry point
# --------------------------------------------------------------------------------------------


def check_batch_size(batch_size: int, n: int, *, flag: str = "--batch-size",
                     what: str = "the training set") -> None:
    """ValueError (one line via :func:`run`) when a batch is larger than the data it draws on."""
    if batch_size > n:
        raise ValueError(
            f"{flag} {batch_size} is larger than {what} ({n:,} images); pass {flag} {n} or "
            "less, or train on more images"
        )


def _print_once() -> None:
    """In a multi-process run: Python's output of process 0 goes to stdout, and nothing else
    does (the other processes' prints, and the collectives library's own lines on file
    descriptor 1, which is pointed at /dev/null)."""
    from jaxcnn.distributed import is_primary

    sys.stdout.flush()
    real_stdout = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    if is_primary():
        sys.stdout = os.fdopen(real_stdout, "w", buffering=1)
    else:
        os.close(real_stdout)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's lifetime)


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None):
    """Call ``main(argv)`` as a command: exit with its int result (0 for anything else);
    ``ValueError`` / ``OSError`` (``FileNotFoundError``, a checkpoint that cannot be written,
    ...) become one ``error: <message>`` line on stderr and exit status 2
    (``JAXCNN_TRACEBACK=1`` shows the traceback instead); Ctrl-C exits 130 with one line. Use
    as ``if __name__ == "__main__": _cli.run(main)``.

    A command is a program, so it sets up the process first:

    * every thread allocates from glibc's main arena
      (:func:`jaxcnn.host_malloc.share_main_arena`, so that ``fit`` can keep XLA's per-step
      buffers mapped; ``JAXCNN_MALLOC=default`` opts out);
    * in a multi-process launch (``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
      ``JAX_PROCESS_ID``, SLURM, Open MPI, a TPU pod) it joins the run
      (:func:`jaxcnn.distributed.initialize`); only process 0 prints to stdout and writes
      results, bundles and figures. When another process is lost mid-run, this one stops with
      exit status 3 and one line naming it (:mod:`jaxcnn.distributed`'s watchdog)."""
    from jaxcnn import distributed, host_malloc

    host_malloc.share_main_arena()  # before JAX starts its threads
    try:
        if distributed.initialize():
            _print_once()
        result = main(argv)
        distributed.mark_done()
    except (ValueError, OSError) as err:
        distributed.mark_done()  # the others see this process end, not vanish
        if os.environ.get("JAXCNN_TRACEBACK") == "1":
            raise
        message = str(err).strip() or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception:
        # A collective whose peer died fails at once; give the watchdog the time to name the
        # lost process (it ends this one); any other error is raised as it is.
        distributed.await_watchdog()
        raise
    raise SystemExit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
