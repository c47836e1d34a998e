"""Every exit code the agent's processes and commands return, in one place.

The supervisor's state machine, the device child, the config loader and every CLI command
use these names; systemd's unit refers to `CONFIG` (RestartPreventExitStatus=78).
"""

OK = 0
FAILURE = 1  # something went wrong; retrying may help
USAGE = 2  # bad command-line arguments (argparse's own code)
NOT_RUNNING = 3  # `c8ysim status`: nothing answers (as `systemctl status` says it)
RESTART = 75  # a device child ended itself for a c8y_Restart: respawn it at once
CONFIG = 78  # sysexits.h EX_CONFIG: bad configuration or credentials; never retried
