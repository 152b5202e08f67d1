"""Evaluation protocols on the shared real data (see ../shared/data/README.md)."""
