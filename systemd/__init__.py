"""The systemd unit and the udev rule, shipped as package data for `evsed install`."""
