"""Benchmarks of the kit's stages (`make bench-*`); results go to bench/out/ (git-ignored)."""
