"""The systemd unit templates, shipped as package data for `sortbox install-units`."""
