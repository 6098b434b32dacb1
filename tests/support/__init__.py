"""Development tooling used by the tests and the benchmarks; never shipped in the wheel.

- :mod:`tests.support.seaweed`: a real S3 server (SeaweedFS) on loopback.
- :mod:`tests.support.hostile_host`: makes the bundled simulator a hostile image host.
"""
