"""Sweep tests run Ray without token authentication, in every test and every node they start.

Ray enables token auth on a head node when ``~/.ray/auth_token`` exists, and caches the mode in the
driver process; one setting for the whole package keeps the local and loopback clusters consistent
whatever the machine's home directory holds.
"""

import os

os.environ["RAY_AUTH_MODE"] = "disabled"
