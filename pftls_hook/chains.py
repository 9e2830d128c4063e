"""What Postfix serves once several chains are deployed: decided here, from the selection.

Contract: `plan(selection, ...)` is pure: given what main.cf lists now (`pointed`), what
pftls-hook's SNI table lists now (`table_now`) and the lineages being deployed (lineage ->
key algorithm of the verified bundle), it returns a `Plan`: the `smtpd_tls_chain_files`
list, the SNI table's entries (name -> files; {} when no table is managed), and for each
lineage deployed the probes that must show its certificate.

The rules:
- a chain is listed when its lineage is deployed now or its file is listed already: a
  refused lineage keeps its previous version served, and one never deployed is left out;
- a lineage no longer selected leaves the list and the table (a name removed from `sni`
  leaves the table);
- a lineage deployed by name that the selection does not serve takes its algorithm's place
  among the default chains (`install NAME`);
- the table holds each SNI name's chains, and the default names with the default chains
  (Postfix logs an SNI mismatch for a default name missing from the table);
- each deployed lineage is proven by a client offering only its algorithm, on every
  endpoint, without SNI for a default chain and with each SNI name it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from pftls_hook.config import Endpoint
from pftls_hook.select import ALGORITHMS, Chain, Selection


@dataclass(frozen=True)
class Plan:
    chain_files: list[str]
    table: dict[str, list[str]]
    probes: dict[str, list[Endpoint]]  # lineage -> where its certificate must be served


def _files(
    chains: Sequence[Chain],
    listed: Sequence[str],
    deploying: Mapping[str, str],
    path_of: Callable[[str], str],
) -> list[str]:
    by_algorithm = {c.algorithm: c.lineage for c in chains}
    files = []
    for algorithm in (*ALGORITHMS, *sorted(set(by_algorithm) - set(ALGORITHMS))):
        name = by_algorithm.get(algorithm)
        if name is not None and (name in deploying or path_of(name) in listed):
            files.append(path_of(name))
    return files


def plan(
    selection: Selection,
    *,
    hostnames: Sequence[str],
    endpoints: Sequence[Endpoint],
    pointed: Sequence[str],
    table_now: Mapping[str, Sequence[str]],
    deploying: Mapping[str, str],
    path_of: Callable[[str], str],
) -> Plan:
    served = {c.lineage for _, chains in selection.sni for c in chains}
    served.update(c.lineage for c in selection.chains)
    default = {c.algorithm: c for c in selection.chains}
    default.update({a: Chain(a, n) for n, a in deploying.items() if n not in served})
    order = (*ALGORITHMS, *sorted(set(default) - set(ALGORITHMS)))
    chains = [default[a] for a in order if a in default]
    chain_files = _files(chains, pointed, deploying, path_of)

    table: dict[str, list[str]] = {}
    for name, sni_chains in selection.sni:
        files = _files(sni_chains, table_now.get(name, ()), deploying, path_of)
        if files:
            table[name] = files
    if table or table_now:
        for host in hostnames:
            table.setdefault(host.lower(), chain_files)

    probes: dict[str, list[Endpoint]] = {n: [] for n in deploying}
    for chain in chains:
        if chain.lineage in deploying:
            probes[chain.lineage] += [replace(e, algorithm=chain.algorithm) for e in endpoints]
    for name, sni_chains in selection.sni:
        for chain in sni_chains:
            if chain.lineage in deploying and path_of(chain.lineage) in table.get(name, ()):
                probes[chain.lineage] += [
                    replace(e, algorithm=chain.algorithm, servername=name) for e in endpoints
                ]
    return Plan(chain_files, table, probes)
