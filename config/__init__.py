"""Example configuration files, shipped as package data (`evsed install` copies the Pi one)."""
