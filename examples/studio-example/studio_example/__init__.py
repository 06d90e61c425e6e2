"""An example Studio plugin: copy this folder to start your own (see README.md next to it)."""
