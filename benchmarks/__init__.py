"""Efficiency benchmarks of Video2LoRA (docs/design.md §7); run each module with `python -m benchmarks.<name> --help`."""
