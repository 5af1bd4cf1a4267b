"""Three checkpoints' worth of upload progress, then `finished` (tests/test_progress.py).

`python progress_bar.py`: on a terminal it draws the bar; elsewhere it prints only `finished`.
"""

from __future__ import annotations

import time

from tracked_ckpt.progress import Progress


def main() -> None:
    with Progress("tracked-ckpt: uploading", 3 * 1024 * 1024, 3, delay=0) as bar:
        for _ in range(3):
            time.sleep(0.2)
            bar.advance(1024 * 1024, 1)
    print("finished")


if __name__ == "__main__":
    main()
