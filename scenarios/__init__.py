"""The narrated `txlab scenario NAME` demos of the seed's claims, run on real processes."""
