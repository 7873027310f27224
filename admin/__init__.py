"""The administrator's tools, run as root: the provisioner (``t3-provision-users``), the roster,
and the fleet view (``claude-auth-sync diagnose --all``).

This layer may import the kernel (``claude_auth_sync``) and the Vault plugin
(``claude_auth_sync.plugins.backend_vault``); the kernel imports nothing from here. It reaches the
kernel's command line as a plugin (entry point ``admin``, hook ``cas_commands``).
"""
