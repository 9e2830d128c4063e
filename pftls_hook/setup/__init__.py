"""Setup commands: configure (the TLS profile), obtain and register (certbot).

This package's own namespace holds only the choices the CLI's parser offers, so building
the parser imports no setup code; a command's module is imported when it runs.
"""

AUTHENTICATORS = ("dns-ovh", "standalone", "webroot")
CLIENT_LEVELS = ("may", "encrypt")
