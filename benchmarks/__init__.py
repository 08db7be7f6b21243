"""Efficiency benchmarks of Video2LoRA (DESIGN.md §7); run each module with `python -m benchmarks.<name> --help`."""
