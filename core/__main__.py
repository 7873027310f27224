"""``python -m claude_auth_sync`` is ``claude-auth-sync``."""

import sys

from .cli import main

sys.exit(main())
