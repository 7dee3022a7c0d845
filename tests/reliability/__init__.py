"""Reliability tests: failure modes found on the code (bad input, races, crashes, hostile clients)."""
