"""``python -m resnets.train.torchrun ARGS``: torchrun (``torch.distributed.run``) as ``train --nproc`` runs it,
quiet once a rank has reported a UserError (``$RESNETS_ERROR_FILE`` exists) or a signal (Ctrl-C) arrived: no
ChildFailedError traceback and no shutdown log after the one line the launcher prints. Other failures keep
torchrun's full report."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; its exit status (the failed rank's where a rank reported the error)."""
    import torch.distributed.elastic.multiprocessing.api as mp_api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from ..errors import ERROR_FILE_ENV

    error_file = os.environ.get(ERROR_FILE_ENV)
    signals: list[int] = []
    terminate = mp_api._terminate_process_handler  # what torchrun installs for SIGINT/SIGTERM/SIGHUP/SIGQUIT

    def note_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        terminate(signum, frame)

    mp_api._terminate_process_handler = note_signal

    def reported() -> bool:
        return bool(signals) or bool(error_file) and os.path.exists(str(error_file))

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not reported()

    plain = logging.getLogger("torch.distributed.run")  # its notices print as under `python -m`: message only
    plain.propagate = False
    plain.addHandler(logging.StreamHandler(sys.stderr))
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for handler in {h for lg in loggers for h in lg.handlers}:
        handler.addFilter(Quiet())
    try:
        torchrun(argv)
    except ChildFailedError as exc:
        if not reported():
            raise
        return exc.get_first_failure()[1].exitcode if not signals else 128 + signals[0]
    except (mp_api.SignalException, KeyboardInterrupt):
        if not reported():
            raise
        return 128 + (signals[0] if signals else signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
