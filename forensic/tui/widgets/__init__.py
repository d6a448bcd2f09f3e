"""The terminal UI's widgets and screens, one per module."""
