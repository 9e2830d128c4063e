"""Setup commands: configure (the TLS profile), obtain and register (certbot).

This package's own namespace holds only the choices and help texts the CLI's parser offers,
so building the parser imports no setup code; a command's module is imported when it runs.
"""

AUTHENTICATORS = ("dns-ovh", "standalone", "webroot")
CLIENT_LEVELS = ("may", "encrypt")

# `obtain --help`: what the admin needs before the first run. The scope is what certbot-dns-ovh
# calls through lexicon: the zone list, then the zone's status, records and refresh.
OBTAIN_EPILOG = """\
dns-ovh credentials: create a token that can touch only the mail zone on
https://eu.api.ovh.com/createToken/ (ca.api.ovh.com for ovh-ca), with the rights
  GET /domain/zone/
  GET /domain/zone/<zone>/*    POST /domain/zone/<zone>/*
  PUT /domain/zone/<zone>/*    DELETE /domain/zone/<zone>/*
and keep the four values in a file owned by root, mode 600, for example
/root/.secrets/certbot/ovh.ini:
  dns_ovh_endpoint = ovh-eu
  dns_ovh_application_key = ...
  dns_ovh_application_secret = ...
  dns_ovh_consumer_key = ...
obtain checks that file (owner, mode, UTF-8 text, the four keys non-empty, a known
endpoint) before certbot runs.

When the names include all those of an existing lineage, that lineage is expanded
(certbot --cert-name NAME --expand); otherwise a new lineage is created. --dry-run
says which."""
PROPAGATION_HELP = (
    "seconds certbot waits after creating the TXT record through the OVH API, before it "
    "asks the CA to validate, so that OVH's name servers serve the new record "
    "(default 60, as in the guide; certbot-dns-ovh's own default is 120)"
)
