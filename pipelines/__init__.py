"""Stage 3 and tooling: scoring at scale, evaluation, benchmarks."""
