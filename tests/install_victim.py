"""Run one bundle install and SIGKILL it just before its N-th change to the installed bundles folder.

    python tests/install_victim.py CONFIG DATA_DIR ARCHIVE N

Every change to the file system goes through an audited call (open for writing, rename, symlink,
unlink, rmdir, mkdir, rmtree: PEP 578), so an audit hook sees each one before it happens and can kill
the process there, as a power cut would. N = 0 kills nothing and prints how many changes there were.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from device import updates
from device.core.settings import load_config

WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
EVENTS = {"os.rename", "os.symlink", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.chmod", "os.truncate"}


def main() -> None:
    config_path, data_dir, archive, kill_at = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    config = load_config(config_path).with_overrides(**{"store.data_dir": data_dir})
    root = str(config.updates.installed_root(data_dir).resolve())
    seen = 0

    def inside(path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root)

    def hook(event: str, args: tuple) -> None:
        nonlocal seen
        if event == "open":
            path, _, flags = args
            if not (isinstance(flags, int) and flags & WRITES and inside(path)):
                return
        elif event not in EVENTS or not any(inside(a) for a in args[:2]):
            return
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    result = updates.install(archive, config)
    print(f"changes={seen} {result.line()}")


if __name__ == "__main__":
    main()
