"""Hold a spool folder as a live process does, until told to let go (tests/test_session.py).

`python hold_spool.py SPOOL`: take the spool's hold, print `held`, and release it
when a line arrives on stdin.
"""

import sys

from tracked_ckpt.spool import Spool


def main(folder: str) -> None:
    hold = Spool(folder).hold()
    print("held", flush=True)
    sys.stdin.readline()  # until the test says so
    hold.release()


if __name__ == "__main__":
    main(sys.argv[1])
