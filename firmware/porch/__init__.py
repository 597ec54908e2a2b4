"""porch: SIP door-phone firmware for the Raspberry Pi."""

__version__ = "0.1.0"
