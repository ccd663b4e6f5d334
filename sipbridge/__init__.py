"""sipbridge: an outbound SIP bridge (B2BUA) for voice-AI agents."""

__version__ = "0.1.0"
