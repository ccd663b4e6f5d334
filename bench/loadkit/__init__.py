"""Parts of bench/load.py, one phase or concern per module."""
