"""`python -m socketlab.tools.speed`: the receiver child process that `run_speed` starts (see receiver)."""

import contextlib

from socketlab.tools.speed.receiver import main

# Ctrl-C reaches the whole process group; the parent reports the interruption, the child just ends.
with contextlib.suppress(KeyboardInterrupt):
    main()
