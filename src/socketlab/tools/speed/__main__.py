"""`python -m socketlab.tools.speed`: the receiver child process that `run_speed` starts (see receiver)."""

from socketlab.tools.speed.receiver import main

main()
