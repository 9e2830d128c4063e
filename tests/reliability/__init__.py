"""Proof under fire (issue 5): crashes, faults, races, hostile input, key exposure."""
