"""The test bed: real servers (docker-registry, notary-server/-signer, redis-server) and real
clients (skopeo, the notary CLI), started on free loopback ports. Used by the test fixtures,
the demo and the benchmarks; not part of the shipped package."""
