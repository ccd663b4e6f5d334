"""The SIP engine. The only package that imports pjsua2 (and only in worker.py)."""
