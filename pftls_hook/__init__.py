"""pftls-hook: take certbot's renewed certificate to Postfix, verified, atomically, proven."""

__version__ = "0.1.0"
