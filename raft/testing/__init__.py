"""The seeded Raft simulator and the linearizability checker, for the tests and `make sim`; not the library."""
